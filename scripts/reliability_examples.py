"""Re-run the examples of the reliability probe (issue 13) and print what each does now.

    ESC50_ROOT=../shared/esc50 .venv/bin/python scripts/reliability_examples.py [--only NAME]

Every example runs through the real command line (``python -m esc_sweep``) in a
scratch folder, except the few that are about a library function's numbers
(fingerprints, mixup). One line per example: exit status, seconds, the message.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
TINY = ["dataset=synthetic", "dataset.clips_per_class=10", "dataset.clip_seconds=0.5", "features.n_mels=32",
        "features.n_fft=256", "model.width=8", "augmentation=none", "trainer.epochs=1", "trainer.progress=false",
        "tracking.enabled=false"]


def cli(args, cwd, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "esc_sweep", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, env=env)
    text = (out.stdout + out.stderr).strip()
    lines = [line for line in text.splitlines() if line.startswith(("error:", "interrupted:", "dry run passed"))]
    shown = lines[-1] if lines else (text.splitlines()[-1] if text else "")
    tb = " TRACEBACK" if "Traceback" in text else ""
    return f"exit {out.returncode}{tb} {time.monotonic() - started:5.1f}s | {shown[:220]}"


def tones(folder: Path, classes=("dog", "cat"), per_class=6, rate=16000):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            t = np.arange(rate // 2) / rate
            sf.write(folder / name / f"{i}.wav", 0.3 * np.sin(2 * np.pi * (300 + 200 * c) * t)
                     + 0.01 * rng.standard_normal(t.size), rate)


def examples(work: Path):
    esc = ["trainer.dry_run=true", "tracking.enabled=false"]
    yield "features.n_fft=200000 (31.5 GB before)", lambda: cli(esc + ["features.n_fft=200000"], work)
    yield "features.sample_rate=1", lambda: cli(esc + ["features.sample_rate=1"], work)
    yield "features.n_mels=8 with baseline_cnn", lambda: cli(esc + ["features.n_mels=8"], work)
    yield "a 50 ms clip", lambda: cli(TINY + ["dataset.clip_seconds=0.05", "trainer.dry_run=true"], work)
    yield "augmentation.crop_seconds=0.001", lambda: cli(esc + ["augmentation.crop_seconds=0.001"], work)
    yield "ViT with a fixed 224x224 input", lambda: cli(esc + ["model.name=vit_base_patch16_224"], work)
    yield "optimizer.name=torch.optim.LBFGS", lambda: cli(esc + ["optimizer.name=torch.optim.LBFGS"], work)
    yield "optimizer.betas=[2,3]", lambda: cli(esc + ["optimizer.betas=[2,3]"], work)
    yield "unknown model.kwargs key", lambda: cli(esc + ["model=resnet18", "+model.kwargs.foo=1"], work)
    yield "trainer.device=mps without MPS", lambda: cli(esc + ["trainer.device=mps"], work)

    def empty_fold():
        root = work / "csvdata"
        tones(root)
        rows = ["filename,label,fold"] + [f"{c}/{i}.wav,{c},{1 + i % 2}" for c in ("dog", "cat") for i in range(6)]
        (root / "labels.csv").write_text("\n".join(rows) + "\n")
        return cli(TINY[1:] + ["dataset=folder", f"dataset.root={root}", "dataset.csv=labels.csv",
                               "dataset.num_folds=3", "trainer.folds=[1,3]"], work)
    yield "a fold left with no clips", empty_fold
    yield "dataset.classes=[dog] (100 % before)", lambda: cli(["dataset.classes=[dog]", "trainer.epochs=1",
                                                              "tracking.enabled=false"], work)
    yield "dataset.classes=[] (all classes before)", lambda: cli(["dataset.classes=[]", "trainer.epochs=1",
                                                                 "tracking.enabled=false"], work)

    def symlink_dup():
        root = work / "linked"
        tones(root, ("dog", "cat", "cow"))
        (root / "dog" / "again").symlink_to(".")
        out = cli(TINY[1:] + ["dataset=folder", f"dataset.root={root}", "dataset.num_folds=3",
                              "trainer.folds=[1]", "trainer.dry_run=false"], work)
        import json
        (results,) = work.glob("outputs/runs/*/*/results.json")
        clips = sum(sum(map(sum, f["confusion"])) for f in json.loads(results.read_text())["folds"])
        shutil.rmtree(work / "outputs")
        return out.split("|")[0] + f"| fold 1 validated {clips} clips: 18 files in 3 folds (8 if the 6 linked dog clips counted twice)"
    yield "symlink dog/again -> . (97 % before)", symlink_dup

    def loop():
        root = work / "looped"
        tones(root)
        (root / "cat" / "up").symlink_to("..")
        started = time.monotonic()
        out = cli(TINY[1:] + ["dataset=folder", f"dataset.root={root}", "dataset.num_folds=3", "trainer.folds=[1]"],
                  work, timeout=300)
        return out + f" (walk ended; total {time.monotonic() - started:.0f}s)"
    yield "symlink loop in a folder dataset", loop

    def fifo():
        root = work / "fifo"
        tones(root)
        os.mkfifo(root / "dog" / "stuck.wav")
        return cli(TINY[1:] + ["dataset=folder", f"dataset.root={root}", "dataset.num_folds=3", "trainer.folds=[1]"],
                   work, timeout=120)
    yield "a FIFO named like a clip (hung before)", fifo

    def reexport():
        sys.path.insert(0, str(REPO))
        from esc_sweep.data.cache import files_fingerprint
        root = work / "reexport"
        tones(root)
        path = root / "dog" / "0.wav"
        before = files_fingerprint(sorted(root.rglob("*.wav")), root)
        data, rate = sf.read(path)
        size, mtime = path.stat().st_size, path.stat().st_mtime_ns
        sf.write(path, -data, rate)  # same length and size, other content
        os.utime(path, ns=(mtime, mtime))
        after = files_fingerprint(sorted(root.rglob("*.wav")), root)
        return f"same size {path.stat().st_size == size}, same mtime; fingerprint changed: {before != after}"
    yield "audio re-exported with the same sizes", reexport

    def mixup():
        import torch
        from esc_sweep.features.augment import Mixup
        lam = Mixup(1e-6)._sample_lambda(10000, torch.device("cpu"))
        lam = torch.maximum(lam, 1 - lam)
        return f"mixup_alpha=1e-6: mean kept share {float(lam.mean()):.4f} (0.5000 before)"
    yield "mixup_alpha near 0", mixup


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the examples whose name contains this")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="esc_sweep-examples-"))
    try:
        for name, run in examples(work):
            if args.only and args.only not in name:
                continue
            try:
                result = run()
            except subprocess.TimeoutExpired:
                result = "TIMED OUT"
            print(f"{name:45s} {result}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
