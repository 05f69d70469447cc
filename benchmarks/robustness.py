"""How a bundle's accuracy depends on recording level, sample rate and codec.

    python benchmarks/robustness.py --bundle outputs/runs/<run>/bundle --root ../shared/esc50 --fold 5
    python benchmarks/robustness.py --train "features.normalize=instance" --name instance --root ../shared/esc50
    python benchmarks/robustness.py --train "features.normalize=instance" --ensemble --tta 10 --keep /tmp/kept
    python benchmarks/robustness.py --fold-members outputs/runs/<run>/bundle_ensemble --name cpu_hour

With ``--train OVERRIDES`` it first trains the bundle the way docs/predict.md
measures one: the ESC-10 classes of folds 1-4 as a CSV folder dataset (fold 5
never seen), CV fold 1 for the estimate, then a final fit on all four folds.
``--ensemble`` runs the CV on all four folds instead (a 4-fold CV of folds 1-4),
so the run also saves its fold ensemble (``bundle_ensemble/``), and both are
scored on fold 5: no member of the ensemble has seen it, which makes this the
honest measurement a 5-fold ESC-50 CV cannot give (there every clip is in the
training folds of 4 of the 5 members). ``--fold-members ENSEMBLE`` takes the fold ensemble of a full CV (saved with
``trainer.keep_fold_models=true``) and scores each member only on its own
held-out fold, pooled over the folds: every clip of the dataset (all classes the
bundle knows) is tagged by the one model that never saw it, as in the CV itself.
``--bundle`` may name a fold ensemble
too (it says whether the test fold is outside all its members' training
folds), and may be given several times. ``--tta 0 10`` scores each bundle
without and with 10 test-time crops per clip. ``--only "rate,gain +0"`` keeps
the perturbations whose names contain one of the words (test-time crops cost
about 10 passes per clip). ``--keep DIR`` keeps the trained bundles.

Each perturbation rewrites the held-out fold's clips as files and tags them
through ``esc-sweep predict``'s own per-file path (header probe, windowed
decoding, resampling to the bundle's rate), so what is measured is what a user
gets from files:

* gain: -20, -12, -6, -3, 0, +10 dB (32-bit float WAV, so +10 dB does not clip
  in the file; the clips are peak-normalised in the shared copy);
* sample rate: 8, 16, 22.05, 44.1, 48 kHz (16-bit WAV, resampled from the copy's
  16 kHz; 8 kHz removes everything above 4 kHz);
* codec: OGG Vorbis and FLAC (8-bit source re-encoded).

Prints a table and writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from esc_sweep.app.predict import predict_one  # noqa: E402
from esc_sweep.bundle import load_bundle  # noqa: E402
from esc_sweep.data.audio import resample  # noqa: E402

GAINS_DB = [-20, -12, -6, -3, 0, 10]
RATES = [8000, 16000, 22050, 44100, 48000]
CODECS = [("ogg", "OGG", "VORBIS"), ("flac", "FLAC", "PCM_16")]
RECIPE = ["dataset=folder", "dataset.num_folds=4", "model.width=16", "augmentation=specaugment", "optimizer.lr=0.002",
          "trainer.batch_size=16", "trainer.epochs=12", "trainer.folds=[1]", "trainer.train_eval_every=100",
          "trainer.final_fit=true", "tracking.enabled=false", "trainer.progress=false"]


def esc50_rows(root: Path) -> list[dict]:
    with open(root / "meta" / "esc50.csv") as handle:
        return list(csv.DictReader(handle))


def esc10_rows(root: Path) -> list[dict]:
    return [r for r in esc50_rows(root) if r["esc10"].strip().lower() == "true"]


def fold_member_bundles(ensemble) -> dict[int, object]:
    """Each member of a fold ensemble as a one-model bundle, by the fold it was held out from."""
    members = ensemble.meta.get("members") or []
    if not members:
        raise SystemExit(f"--fold-members needs the fold models of a CV (bundle_ensemble/); {ensemble.source} "
                         "is a single model with no held-out fold on record")
    single = {k: v for k, v in ensemble.meta.items() if k != "members"}
    return {int(m["fold"]): replace(ensemble, model=model, meta=single)
            for m, model in zip(members, ensemble.model.members)}


def audio_path(root: Path, filename: str) -> Path:
    stem = Path(filename).stem
    found = sorted((root / "audio").glob(f"{stem}.*"))
    if not found:
        raise SystemExit(f"no audio file for {stem} under {root / 'audio'}")
    return found[0]


def train_bundles(root: Path, overrides: list[str], work: Path, ensemble: bool) -> list[Path]:
    rows = [r for r in esc10_rows(root) if int(r["fold"]) != 5]
    listing = work / "esc10_folds1-4.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label", "fold"])
        for r in rows:
            writer.writerow([audio_path(root, r["filename"]).name, r["category"], r["fold"]])
    recipe = [o.replace("trainer.folds=[1]", "trainer.folds=[1,2,3,4]") if ensemble else o for o in RECIPE]
    args = [sys.executable, "-m", "esc_sweep", *recipe, f"dataset.root={root / 'audio'}",
            f"dataset.csv={listing}", *overrides]
    print("training:", " ".join(args[3:]), flush=True)
    out = subprocess.run(args, cwd=work, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    (bundle,) = work.glob("outputs/runs/*/*/bundle")
    print(out.stdout[-1500:], flush=True)
    return [bundle, bundle.parent / "bundle_ensemble"] if ensemble else [bundle]


def perturbations(clip: np.ndarray, rate: int):
    """(name, extension, writer) for each perturbation of one mono clip at ``rate``."""
    for db in GAINS_DB:
        yield f"gain {db:+d} dB", "wav", lambda p, db=db: sf.write(p, clip * 10 ** (db / 20), rate, subtype="FLOAT")
    for new_rate in RATES:
        def write(p, new_rate=new_rate):
            x = resample(torch.from_numpy(clip.astype(np.float32)), rate, new_rate).numpy()
            sf.write(p, np.clip(x, -1, 1), new_rate, subtype="PCM_16")
        yield f"rate {new_rate / 1000:g} kHz", "wav", write
    for ext, fmt, subtype in CODECS:
        yield f"codec {fmt.lower()}", ext, lambda p, fmt=fmt, subtype=subtype: sf.write(p, clip, rate, format=fmt,
                                                                                         subtype=subtype)


def bundle_label(bundle) -> str:
    kind = f"fold ensemble ({bundle.num_members} models)" if bundle.num_members > 1 else "single model"
    return kind + (f", {bundle.tta_crops}-crop TTA" if bundle.tta_crops > 1 else "")


def honesty_note(bundle, fold: int) -> str:
    """Whether clips of ``fold`` are outside every member's training folds (as bundle.json records them)."""
    members = bundle.meta.get("members")
    if not members:
        return "single model: trained on the folds of its dataset"
    seen = sorted({f for m in members for f in m["trained_on_folds"]})
    if fold in seen:
        return f"NOT honest: fold {fold} is in the training folds of some members (folds {seen})"
    return f"honest: members trained on folds {seen}, none on fold {fold}"


def evaluate(bundles: list, root: Path, fold: int, only: list[str] | None = None) -> dict[str, dict]:
    """Accuracy per perturbation of each bundle (by label) on the ESC-10 clips of ``fold``."""
    rows = [r for r in esc10_rows(root) if int(r["fold"]) == fold]
    return score(rows, lambda r: bundles, root, only)


def score(rows: list[dict], bundles_for, root: Path, only: list[str] | None = None) -> dict[str, dict]:
    """Accuracy per perturbation of the bundles ``bundles_for(row)`` gives for each clip (by label).

    Every perturbed file is written once and tagged by each of those bundles; the labels of
    the result are the bundles' labels (``bundle_label``), so per-row bundles of one kind pool.
    """
    correct: dict[str, dict[str, list[bool]]] = {}
    every = max(1, len(rows) // 20)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for i, r in enumerate(rows):
            if i % every == 0 and len(rows) > 100:
                print(f"  {i}/{len(rows)} clips, {time.time() - started:.0f} s", flush=True)
            bundles = bundles_for(r)
            data, rate = sf.read(audio_path(root, r["filename"]), dtype="float32")
            clip = data if data.ndim == 1 else data.mean(1)
            for name, ext, write in perturbations(clip, rate):
                if only and not any(word in name for word in only):
                    continue
                path = Path(tmp) / f"clip.{ext}"
                write(path)
                for bundle in bundles:
                    label = predict_one(bundle, path, top_k=1)["label"]
                    correct.setdefault(bundle_label(bundle), {}).setdefault(name, []).append(label == r["category"])
    return {variant: {name: float(np.mean(hits)) for name, hits in per.items()} | {"clips": len(rows)}
            for variant, per in correct.items()}


def spread(accuracy: dict) -> dict[str, float]:
    """Drops from the as-recorded accuracy, for the perturbations that were measured."""
    base = accuracy.get("gain +0 dB")
    gains = [accuracy[f"gain {d:+d} dB"] for d in GAINS_DB if f"gain {d:+d} dB" in accuracy]
    rates = [accuracy[f"rate {r / 1000:g} kHz"] for r in RATES if f"rate {r / 1000:g} kHz" in accuracy]
    out = {}
    if base is not None and gains:
        out["worst_gain_drop_points"] = 100 * max(base - g for g in gains)
    if rates:
        out["rate_spread_points"] = 100 * (max(rates) - min(rates))
    if base is not None and "rate 8 kHz" in accuracy:
        out["8k_drop_points"] = 100 * (base - accuracy["rate 8 kHz"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", action="append", help="a bundle folder (single or fold ensemble; repeatable), "
                                                          "else --train")
    parser.add_argument("--train", default=None, help="train a bundle first, with these extra overrides (space-separated)")
    parser.add_argument("--ensemble", action="store_true",
                        help="with --train: 4-fold CV on folds 1-4, scoring its fold ensemble beside the final fit")
    parser.add_argument("--tta", type=int, nargs="+", default=[0],
                        help="test-time crops to score each bundle with (0: none; e.g. --tta 0 10)")
    parser.add_argument("--only", help="comma-separated words: keep the perturbations whose names contain one")
    parser.add_argument("--keep", help="with --train: copy the trained bundle folders here")
    parser.add_argument("--name", default="bundle", help="name for the result file")
    parser.add_argument("--root", default=os.environ.get("ESC50_ROOT", str(REPO.parent / "shared" / "esc50")))
    parser.add_argument("--fold", type=int, default=5)
    parser.add_argument("--fold-members", metavar="ENSEMBLE",
                        help="a CV's fold ensemble: score each member on its own held-out fold, every clip once")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fold_members:
        return fold_members_main(args)
    root = Path(args.root)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="esc_sweep-robustness-") as work:
        if args.bundle:
            folders = [Path(b) for b in args.bundle]
        else:
            folders = train_bundles(root, (args.train or "").split(), Path(work), args.ensemble)
            if args.keep:
                for folder in folders:
                    shutil.copytree(folder, Path(args.keep) / folder.name, dirs_exist_ok=True)
        bundles = []
        for folder in folders:
            for crops in args.tta:
                bundles.append(load_bundle(folder, tta_crops=crops))
        only = [w.strip() for w in args.only.split(",")] if args.only else None
        accuracy = evaluate(bundles, root, args.fold, only)
        meta = json.loads((folders[0] / "bundle.json").read_text())
        notes = {bundle_label(b): honesty_note(b, args.fold) for b in bundles}
    variants = list(accuracy)
    print(f"\n{args.name}: ESC-10 fold {args.fold} ({accuracy[variants[0]]['clips']} clips), accuracy in %")
    for variant in variants:
        print(f"  [{variant}] {notes[variant]}")
    print(f"  {'perturbation':16s} " + " ".join(f"{v[:28]:>28s}" for v in variants))
    for name in accuracy[variants[0]]:
        if name != "clips":
            print(f"  {name:16s} " + " ".join(f"{100 * accuracy[v][name]:28.1f}" for v in variants))
    first = accuracy[variants[0]]
    result = {
        "name": args.name,
        "accuracy": first,  # the first variant (first bundle, first --tta value), as before
        **spread(first),
        "variants": {v: {"accuracy": accuracy[v], "note": notes[v], **spread(accuracy[v])} for v in variants},
        "train_overrides": (RECIPE + (args.train or "").split() + (["trainer.folds=[1,2,3,4]"] if args.ensemble else [])
                            if not args.bundle else None),
        "bundles": [str(f) for f in folders],
        "tta_crops": args.tta,
        "only": only,
        "features": meta["config"]["features"],
        "augmentation": meta["config"]["augmentation"],
        "cv_estimate": meta.get("cv", {}).get("cv_val_acc_mean"),
        "cv_estimate_tta": meta.get("cv", {}).get("cv_val_acc_tta_mean"),
        "cv_folds": meta["config"]["trainer"]["folds"],
        "data": f"{root} (reduced-fidelity ESC-50 copy), ESC-10 classes, train folds 1-4, test fold {args.fold}",
    }
    out = write_result(result, args.name, started)
    for v in variants:
        print(f"[{v}] " + ", ".join(f"{k} {value:.1f}" for k, value in spread(accuracy[v]).items()))
    print(f"wrote {out}")


def write_result(result: dict, name: str, started: float) -> Path:
    """Add the machine, date and duration to ``result`` and write benchmarks/results/robustness_<name>.json."""
    result.update(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                  date=time.strftime("%Y-%m-%d"), seconds=round(time.time() - started))
    out = REPO / "benchmarks" / "results" / f"robustness_{name}.json"
    out.write_text(json.dumps(result, indent=2))
    return out


def fold_members_main(args) -> None:
    """--fold-members: every clip of the CV tagged by the fold model that did not train on it."""
    root = Path(args.root)
    started = time.time()
    only = [w.strip() for w in args.only.split(",")] if args.only else None
    ensemble = load_bundle(Path(args.fold_members), tta_crops=args.tta[0])
    members = fold_member_bundles(ensemble)
    known = set(ensemble.class_names)
    rows = [r for r in esc50_rows(root) if int(r["fold"]) in members and r["category"] in known]
    print(f"{len(rows)} clips of {len(known)} classes in folds {sorted(members)}, each tagged by the member "
          f"held out from its fold", flush=True)
    per_fold = {}
    for fold in sorted(members):
        fold_rows = [r for r in rows if int(r["fold"]) == fold]
        per_fold[fold] = score(fold_rows, lambda r, fold=fold: [members[fold]], root, only)
        label = next(iter(per_fold[fold]))
        print(f"fold {fold}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in per_fold[fold][label].items()
                                           if k != "clips"), flush=True)
    label = next(iter(per_fold[min(per_fold)]))
    names = [k for k in per_fold[min(per_fold)][label] if k != "clips"]
    # Pooled over folds, weighted by each fold's clip count (every clip counts once).
    total = sum(per_fold[f][label]["clips"] for f in per_fold)
    pooled = {n: sum(per_fold[f][label][n] * per_fold[f][label]["clips"] for f in per_fold) / total for n in names}
    cv = (ensemble.metrics or {}) if isinstance(ensemble.metrics, dict) else {}
    cv_fold_acc = {int(f["fold"]): f.get("best_val_acc", f.get("val_acc"))
                   for f in cv.get("folds", []) if isinstance(f, dict) and "fold" in f}
    print(f"\n{args.name}: every clip tagged by its held-out fold model ({total} clips), accuracy in %")
    print(f"  {'perturbation':16s} {'pooled':>7s} " + " ".join(f"{'fold ' + str(f):>7s}" for f in per_fold))
    for n in names:
        print(f"  {n:16s} {100 * pooled[n]:7.1f} " + " ".join(f"{100 * per_fold[f][label][n]:7.1f}" for f in per_fold))
    if cv_fold_acc:
        print("  CV val acc (the training run's own evaluation): " +
              ", ".join(f"fold {f} {100 * a:.1f}" for f, a in sorted(cv_fold_acc.items()) if a is not None))
    result = {
        "name": args.name,
        "protocol": "fold members: each clip tagged by the fold model of the CV that held its fold out "
                    "(trainer.keep_fold_models=true); per-file predict path",
        "accuracy": pooled,
        **spread(pooled),
        "per_fold": {str(f): per_fold[f][label] for f in per_fold},
        "cv_val_acc_per_fold": {str(f): a for f, a in cv_fold_acc.items()},
        "bundle": str(args.fold_members),
        "tta_crops": args.tta[0],
        "only": only,
        "features": ensemble.config["features"],
        "augmentation": ensemble.config["augmentation"],
        "data": f"{root} (reduced-fidelity ESC-50 copy), {len(known)} classes, folds {sorted(members)}, {total} clips",
    }
    out = write_result(result, args.name, started)
    print("pooled: " + ", ".join(f"{k} {value:.1f}" for k, value in spread(pooled).items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
