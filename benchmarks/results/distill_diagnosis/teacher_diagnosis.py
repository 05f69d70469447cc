"""Why did distillation hurt? What the teacher actually hands the student (no training).

For each member k of a fold ensemble (held out fold k), on its held-out fold and on its training folds:
accuracy, mean top probability, entropy and NLL of its whole-clip probabilities (what distill.py caches),
at T=1 and T=2; and for its training clips, the same model on 2.5 s crops (9 evenly spaced windows, the
student's training view under quick_cpu): how often the crop's argmax differs from the whole clip's,
the crop accuracy, and KL(whole-clip teacher || crop teacher), i.e. how far the cached soft label is from
what the teacher itself would say about the crop the student sees.

Usage: ESC50_ROOT=... python teacher_diagnosis.py <bundle_ensemble> > out.json
"""
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from esc_sweep.config import DatasetConfig, FeaturesConfig
from esc_sweep.data import load_clipset
from esc_sweep.features.transforms import build_features, compute_features
from esc_sweep.training import distill
from esc_sweep.training.tta import crop_views

torch.set_num_threads(1)
directory = Path(sys.argv[1])
meta = json.loads((directory / "bundle.json").read_text())
config = meta["config"]
members = [distill.Member(directory / r["weights"], int(r["fold"]), r["trained_on_folds"]) for r in meta["members"]]
teacher = distill.Teacher(directory, meta, members)
features_cfg = distill._section(FeaturesConfig, config["features"])
dataset = OmegaConf.merge(OmegaConf.structured(DatasetConfig),
                          {k: v for k, v in config["dataset"].items() if k in DatasetConfig.__dataclass_fields__})
clips = load_clipset(dataset, int(features_cfg.sample_rate), progress=False)
device = torch.device("cpu")
extractor = build_features(features_cfg).eval()
with torch.inference_mode():
    spectrograms = compute_features(extractor, clips.waveforms, device, 64)
frames = round(2.5 * features_cfg.sample_rate / features_cfg.hop_length)
CROPS = 9
labels, folds = clips.targets, clips.folds


def stats(logits, rows, T):
    p = torch.softmax(logits[rows] / T, 1)
    y = labels[rows]
    return {"acc": float((p.argmax(1) == y).float().mean()),
            "mean_top_prob": float(p.max(1).values.mean()),
            "mean_true_prob": float(p[torch.arange(len(y)), y].mean()),
            "entropy_nats": float(-(torch.xlogy(p, p)).sum(1).mean()),
            "nll": float(-torch.log(p[torch.arange(len(y)), y].clamp_min(1e-12)).mean())}


out = {"teacher": str(directory), "crop_frames": frames, "crops_per_clip": CROPS, "members": {}}
for m in members:
    model_cfg = distill._section(distill.ModelConfig, config["model"])
    model_cfg.pretrained, model_cfg.weights = False, None
    model = distill.create_model(model_cfg, len(meta["class_names"]), features_cfg.normalize,
                                 int(meta["num_bins"]), features_cfg.kind)
    model.load_state_dict(torch.load(m.weights, map_location="cpu", weights_only=True))
    model.eval()
    with torch.inference_mode():
        whole = torch.cat([model(c) for c in spectrograms.split(64)]).float()
        train_rows = torch.nonzero(folds != m.fold).squeeze(1)
        held_rows = torch.nonzero(folds == m.fold).squeeze(1)
        crop_logits = torch.cat([model(crop_views(c, frames, CROPS)) for c in spectrograms[train_rows].split(16)])
        crop_logits = crop_logits.float().reshape(len(train_rows), CROPS, -1)
    entry = {}
    for T in (1.0, 2.0):
        entry[f"T{T:g}"] = {"held_out": stats(whole, held_rows, T), "training_folds": stats(whole, train_rows, T)}
        pw = torch.softmax(whole[train_rows] / T, 1)[:, None, :]
        pc = torch.log_softmax(crop_logits / T, 2)
        kl = (torch.xlogy(pw, pw) - pw * pc).sum(2)  # [N, crops]
        entry[f"T{T:g}"]["training_crops"] = {
            "kl_whole_vs_crop": float(kl.mean()),
            "crop_mean_top_prob": float(pc.exp().max(2).values.mean()),
        }
    y = labels[train_rows][:, None]
    crop_pred = crop_logits.argmax(2)
    whole_pred = whole[train_rows].argmax(1)[:, None]
    entry["training_crops"] = {
        "crop_acc": float((crop_pred == y).float().mean()),
        "crop_disagrees_with_whole_clip": float((crop_pred != whole_pred).float().mean()),
        "clips_with_a_crop_missed": float((crop_pred != y).any(1).float().mean()),
    }
    out["members"][m.fold] = entry
    print(f"fold {m.fold}: {json.dumps(entry)}", file=sys.stderr, flush=True)


def mean(path):
    vals = []
    for e in out["members"].values():
        v = e
        for p in path:
            v = v[p]
        vals.append(v)
    return sum(vals) / len(vals)


out["mean_over_members"] = {
    f"{T}/{where}/{k}": mean([T, where, k])
    for T in ("T1", "T2") for where in ("held_out", "training_folds")
    for k in ("acc", "mean_top_prob", "mean_true_prob", "entropy_nats", "nll")}
out["mean_over_members"].update({f"{T}/training_crops/{k}": mean([T, "training_crops", k])
                                 for T in ("T1", "T2") for k in ("kl_whole_vs_crop", "crop_mean_top_prob")})
out["mean_over_members"].update({f"training_crops/{k}": mean(["training_crops", k])
                                 for k in ("crop_acc", "crop_disagrees_with_whole_clip", "clips_with_a_crop_missed")})
print(json.dumps(out, indent=1))
