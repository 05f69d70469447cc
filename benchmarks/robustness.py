"""How a bundle's accuracy depends on recording level, sample rate and codec.

    python benchmarks/robustness.py --bundle outputs/runs/<run>/bundle --root ../shared/esc50 --fold 5 --esc10
    python benchmarks/robustness.py --train "features.normalize=instance" --name instance --root ../shared/esc50

With ``--train OVERRIDES`` it first trains the bundle the way docs/predict.md
measures one: the ESC-10 classes of folds 1-4 as a CSV folder dataset (fold 5
never seen), CV fold 1 for the estimate, then a final fit on all four folds.

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
import subprocess
import sys
import tempfile
import time
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


def esc10_rows(root: Path) -> list[dict]:
    with open(root / "meta" / "esc50.csv") as handle:
        return [r for r in csv.DictReader(handle) if r["esc10"].strip().lower() == "true"]


def audio_path(root: Path, filename: str) -> Path:
    stem = Path(filename).stem
    found = sorted((root / "audio").glob(f"{stem}.*"))
    if not found:
        raise SystemExit(f"no audio file for {stem} under {root / 'audio'}")
    return found[0]


def train_bundle(root: Path, overrides: list[str], work: Path) -> Path:
    rows = [r for r in esc10_rows(root) if int(r["fold"]) != 5]
    listing = work / "esc10_folds1-4.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label", "fold"])
        for r in rows:
            writer.writerow([audio_path(root, r["filename"]).name, r["category"], r["fold"]])
    args = [sys.executable, "-m", "esc_sweep", *RECIPE, f"dataset.root={root / 'audio'}",
            f"dataset.csv={listing}", *overrides]
    print("training:", " ".join(args[3:]), flush=True)
    out = subprocess.run(args, cwd=work, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    (bundle,) = work.glob("outputs/runs/*/*/bundle")
    print(out.stdout[-1500:], flush=True)
    return bundle


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


def evaluate(bundle_dir: Path, root: Path, fold: int) -> dict:
    bundle = load_bundle(bundle_dir)
    rows = [r for r in esc10_rows(root) if int(r["fold"]) == fold]
    correct: dict[str, list[bool]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in rows:
            data, rate = sf.read(audio_path(root, r["filename"]), dtype="float32")
            clip = data if data.ndim == 1 else data.mean(1)
            for name, ext, write in perturbations(clip, rate):
                path = Path(tmp) / f"clip.{ext}"
                write(path)
                label = predict_one(bundle, path, top_k=1)["label"]
                correct.setdefault(name, []).append(label == r["category"])
    return {name: float(np.mean(hits)) for name, hits in correct.items()} | {"clips": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="a bundle folder (else --train)")
    parser.add_argument("--train", default=None, help="train a bundle first, with these extra overrides (space-separated)")
    parser.add_argument("--name", default="bundle", help="name for the result file")
    parser.add_argument("--root", default=os.environ.get("ESC50_ROOT", str(REPO.parent / "shared" / "esc50")))
    parser.add_argument("--fold", type=int, default=5)
    args = parser.parse_args()
    root = Path(args.root)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="esc_sweep-robustness-") as work:
        bundle = Path(args.bundle) if args.bundle else train_bundle(root, (args.train or "").split(), Path(work))
        accuracy = evaluate(bundle, root, args.fold)
        meta = json.loads((bundle / "bundle.json").read_text())
    base = accuracy["gain +0 dB"]
    print(f"\n{args.name}: ESC-10 fold {args.fold} ({accuracy['clips']} clips), accuracy in %")
    for name, value in accuracy.items():
        if name != "clips":
            print(f"  {name:16s} {100 * value:5.1f}  ({100 * (value - base):+5.1f})")
    result = {
        "name": args.name,
        "accuracy": accuracy,
        "worst_gain_drop_points": 100 * max(base - accuracy[f"gain {d:+d} dB"] for d in GAINS_DB),
        "rate_spread_points": 100 * (max(accuracy[f"rate {r / 1000:g} kHz"] for r in RATES)
                                     - min(accuracy[f"rate {r / 1000:g} kHz"] for r in RATES)),
        "train_overrides": RECIPE + (args.train or "").split() if not args.bundle else None,
        "features": meta["config"]["features"],
        "augmentation": meta["config"]["augmentation"],
        "cv_estimate_fold1": meta.get("cv", {}).get("cv_val_acc_mean"),
        "data": f"{root} (reduced-fidelity ESC-50 copy), ESC-10 classes, train folds 1-4, test fold {args.fold}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(time.time() - started),
    }
    out = REPO / "benchmarks" / "results" / f"robustness_{args.name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"worst gain drop {result['worst_gain_drop_points']:.1f} points, rate spread "
          f"{result['rate_spread_points']:.1f} points; wrote {out}")


if __name__ == "__main__":
    main()
