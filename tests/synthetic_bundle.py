"""A model bundle trained once per test session, and held-out audio files for it.

``trained_synthetic_run`` runs the real command line (cross-validation of one
fold, then ``trainer.final_fit=true``) with MLflow tracking into a SQLite store
in a session temp folder. The bundle, predict, serve and plots tests share it:
the first caller trains (about half a minute), later callers reuse it.

``write_synthetic_clips`` writes clips the bundle has never seen: the same tone
classes drawn with another seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from esc_sweep.data.synthetic import generate
from tests.conftest import FAST_SYNTHETIC, run_cli

NUM_CLASSES = 5
CLIP_SECONDS = 0.5
SAMPLE_RATE = 16000
BUNDLE_OVERRIDES = FAST_SYNTHETIC + [
    f"dataset.num_classes={NUM_CLASSES}",
    f"dataset.clip_seconds={CLIP_SECONDS}",
    f"features.sample_rate={SAMPLE_RATE}",
    "trainer.folds=[1]",
    "trainer.final_fit=true",
]


@dataclass
class TrainedRun:
    cwd: Path  # where the command ran
    output_dir: Path  # the Hydra run folder: results.json, bundle/, plots/
    bundle_dir: Path
    tracking_uri: str
    run_id: str  # the MLflow CV run holding the bundle


def trained_synthetic_run(tmp_path_factory) -> TrainedRun:
    base = tmp_path_factory.getbasetemp() / "synthetic-bundle-run"
    record = base / "run.json"
    if record.exists():
        data = json.loads(record.read_text())
        return TrainedRun(**{k: Path(v) if k in ("cwd", "output_dir", "bundle_dir") else v for k, v in data.items()})
    base.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"
    out = run_cli(BUNDLE_OVERRIDES, cwd=base, env={"MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (output_dir,) = [p.parent for p in (base / "outputs" / "runs").glob("*/*/results.json")]
    meta = json.loads((output_dir / "bundle" / "bundle.json").read_text())
    run = TrainedRun(base, output_dir, output_dir / "bundle", uri, meta["mlflow_run_id"])
    record.write_text(json.dumps({k: str(v) for k, v in asdict(run).items()}))
    return run


def synthetic_clips(per_class: int, seed: int, sample_rate: int = SAMPLE_RATE, seconds: float = CLIP_SECONDS):
    """Waveforms [C * per_class, samples] (numpy) and class indices, class-major."""
    waveforms, targets = generate(NUM_CLASSES, per_class, sample_rate, int(round(seconds * sample_rate)), seed)
    return waveforms.numpy(), targets.tolist()


def write_synthetic_clips(folder: Path, per_class: int = 4, seed: int = 123) -> list[tuple[Path, str]]:
    """Mono 16 kHz WAV files ``class_<c>-<i>.wav``; returns (path, true class name)."""
    folder.mkdir(parents=True, exist_ok=True)
    waveforms, targets = synthetic_clips(per_class, seed)
    written = []
    for i, (waveform, target) in enumerate(zip(waveforms, targets)):
        path = folder / f"class_{target}-{i:03d}.wav"
        sf.write(path, waveform, SAMPLE_RATE)
        written.append((path, f"class_{target}"))
    return written


def stereo(waveform: np.ndarray) -> np.ndarray:
    """Two channels with different gains: mixing to mono must happen, not channel picking."""
    return np.stack([0.6 * waveform, 1.4 * waveform], axis=1)
