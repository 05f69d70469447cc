"""Your own data end to end: ``dataset=folder`` through the CLI, and fine-tuning a bundle on it.

Audio files are written into a temp folder (synthetic tones saved as 22.05 kHz
WAV files, so the loader resamples) in both layouts: one sub-folder per class,
and a flat folder with a CSV ``filename,label,fold``. Transfer learning starts
from the session's synthetic bundle (tests/synthetic_bundle.py): its backbone
weights must arrive in the new model before training, under a new head sized
for the new classes. The real-data version (ESC-50 clips as a CSV dataset,
prediction on a held-out fold, fine-tuning on other classes) is marked slow.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from esc_sweep.bundle import BundleError
from esc_sweep.models.init_from import classifier_head_names
from esc_sweep.data.synthetic import generate
from tests.conftest import FAST_SYNTHETIC, compose_config, run_cli
from tests.synthetic_bundle import trained_synthetic_run

RATE = 22050
NEW_CLASSES = ["beep", "hum", "whistle"]  # sorted: the loader sorts class names
PER_CLASS = 8
# FAST_SYNTHETIC without its synthetic-dataset settings; features and model as the synthetic bundle.
# Per-band dataset statistics (not the per-clip default): these tests check they are refitted on new data.
FAST = [o for o in FAST_SYNTHETIC if not o.startswith("dataset")] + ["dataset.clip_seconds=0.5", "features.normalize=dataset"]


def write_tones(folder: Path, seed: int, per_class: int = PER_CLASS) -> list[tuple[Path, str]]:
    """``folder/<class>/<class>-<i>.wav`` for three tone classes; returns (path, class)."""
    waveforms, targets = generate(len(NEW_CLASSES), per_class, RATE, RATE // 2, seed)
    files = []
    for i, (waveform, target) in enumerate(zip(waveforms.numpy(), targets.tolist())):
        name = NEW_CLASSES[target]
        path = folder / name / f"{name}-{i:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, waveform, RATE)
        files.append((path, name))
    return files


def only_run_dir(cwd: Path) -> Path:
    (run_dir,) = [p.parent for p in (cwd / "outputs" / "runs").glob("*/*/results.json")]
    return run_dir


def val_counts_per_class(fold: dict) -> list[int]:
    return [sum(row) for row in fold["confusion"]]


def test_class_subfolders_train_through_the_cli_with_stratified_folds(tmp_path):
    write_tones(tmp_path / "data", seed=1)
    out = run_cli(
        FAST + ["dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.num_folds=4",
                f"dataset.cache_dir={tmp_path / 'cache'}", "trainer.folds=[1,2]", "tracking.enabled=false"],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    assert results["class_names"] == NEW_CLASSES
    # 8 clips per class in 4 stratified folds: each validation fold holds 2 of each class.
    for fold in results["folds"]:
        assert val_counts_per_class(fold) == [2, 2, 2]
    assert results["summary"]["cv_val_acc_mean"] >= 0.6  # chance is 1/3


def test_csv_with_folds_final_fit_predict_and_plots(tmp_path):
    root = tmp_path / "data"
    files = write_tones(root, seed=2)
    # A flat folder and a CSV naming each file's class and fold (clip i of a class -> fold i % 4 + 1).
    flat = root / "all"
    flat.mkdir()
    rows = []
    for i, (path, label) in enumerate(files):
        target = flat / f"clip{i:03d}.wav"
        shutil.move(path, target)
        rows.append({"filename": f"all/{target.name}", "label": label, "fold": i % PER_CLASS % 4 + 1})
    for label in NEW_CLASSES:
        (root / label).rmdir()
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["filename", "label", "fold"])
        writer.writeheader()
        writer.writerows(rows)

    out = run_cli(
        FAST + ["dataset=folder", f"dataset.root={root}", "dataset.csv=labels.csv", "dataset.num_folds=4",
                f"dataset.cache_dir={tmp_path / 'cache'}", "trainer.folds=[3]", "trainer.final_fit=true",
                "tracking.enabled=false"],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    (fold,) = json.loads((run_dir / "results.json").read_text())["folds"]
    assert fold["fold"] == 3 and val_counts_per_class(fold) == [2, 2, 2]  # the CSV's folds, not drawn ones
    meta = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    assert meta["class_names"] == NEW_CLASSES and meta["training"]["num_clips"] == 3 * PER_CLASS

    held_out = write_tones(tmp_path / "new_recordings", seed=3, per_class=3)
    out = run_cli(["predict", str(run_dir / "bundle"), str(tmp_path / "new_recordings"), "--format", "json"],
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    by_name = {Path(p["file"]).name: p["label"] for p in json.loads(out.stdout)["predictions"]}
    accuracy = np.mean([by_name[path.name] == label for path, label in held_out])
    assert accuracy >= 0.7, by_name  # chance is 1/3

    # The data moved: plots of the CV results only, with a warning; --data-root finds it again.
    from esc_sweep.app import plots

    moved = tmp_path / "moved"
    shutil.move(root, moved)
    plots.main([str(run_dir), "--out", str(tmp_path / "pics_without_data")])
    assert {p.name for p in (tmp_path / "pics_without_data").iterdir()} == {
        "per_class_accuracy.png", "confusion_matrix.png", "learning_curves.png"}
    plots.main([str(run_dir), "--out", str(tmp_path / "pics"), "--data-root", str(moved)])
    assert {"waveforms.png", "spectrograms.png", "sample_predictions.png"} <= {
        p.name for p in (tmp_path / "pics").iterdir()}


# --------------------------------------------------------------------------
# Transfer learning


@pytest.fixture(scope="module")
def source_bundle(tmp_path_factory):
    return trained_synthetic_run(tmp_path_factory).bundle_dir


def build_new_model(data_root: Path, cache: Path, extra: list[str]):
    """The trainer's build_model on the folder data, exactly as a fold would call it."""
    from esc_sweep.bundle import read_init_weights
    from esc_sweep.training.fold import prepare
    from esc_sweep.training.loop import TrainingData, build_model

    cfg = compose_config(FAST + ["dataset=folder", f"dataset.root={data_root}", "dataset.num_folds=4",
                                 f"dataset.cache_dir={cache}", "trainer.device=cpu", *extra])
    device = torch.device("cpu")
    clips, spectrograms, targets = prepare(cfg, device)
    data = TrainingData(spectrograms, targets, clips.num_classes, torch.arange(len(clips)), None)
    init = read_init_weights(cfg.model.init_from) if cfg.model.init_from else None
    return build_model(cfg, data, device, init), spectrograms


def test_init_from_loads_the_backbone_and_makes_a_new_head(source_bundle, tmp_path):
    write_tones(tmp_path / "data", seed=4)
    source = torch.load(source_bundle / "model.pt", weights_only=True)
    model, spectrograms = build_new_model(tmp_path / "data", tmp_path / "cache", [f"model.init_from={source_bundle}"])
    state = model.state_dict()
    head = classifier_head_names(model)
    assert head == {"backbone.head.3.weight", "backbone.head.3.bias"}

    # Every backbone tensor (conv weights, batch-norm weights and running statistics) is the bundle's.
    backbone = [k for k in state if k not in head and not k.startswith("standardize.")]
    assert any(k.endswith("conv.weight") or ".0.weight" in k for k in backbone)
    assert set(backbone) == {k for k in source if k not in head and not k.startswith("standardize.")}
    for name in backbone:
        assert torch.equal(state[name], source[name]), name
    # A new head for the 3 new classes (the bundle's has 5).
    assert state["backbone.head.3.weight"].shape == (3, 64) and source["backbone.head.3.weight"].shape == (5, 64)
    # Normalisation statistics are refitted on the new data, not copied.
    expected_mean = spectrograms.data.float().mean(dim=(0, 1, 3))
    assert torch.allclose(state["standardize.mean"].flatten(), expected_mean, atol=1e-3)
    assert not torch.allclose(state["standardize.mean"], source["standardize.mean"])

    # Control: without init_from the same build starts from random weights.
    scratch, _ = build_new_model(tmp_path / "data", tmp_path / "cache", [])
    first_conv = "backbone.features.0.0.weight"
    assert not torch.equal(scratch.state_dict()[first_conv], source[first_conv])


def test_init_from_a_different_architecture_is_a_clear_error(source_bundle, tmp_path):
    write_tones(tmp_path / "data", seed=4, per_class=4)
    with pytest.raises(BundleError, match="none of its weights fit this model"):
        build_new_model(tmp_path / "data", tmp_path / "cache", [f"model.init_from={source_bundle}", "model.width=16"])


def test_fine_tune_from_a_bundle_through_the_cli(source_bundle, tmp_path):
    write_tones(tmp_path / "data", seed=5)
    out = run_cli(
        FAST + ["dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.num_folds=4",
                f"dataset.cache_dir={tmp_path / 'cache'}", f"model.init_from={source_bundle}",
                "trainer.folds=[1]", "trainer.epochs=3", "trainer.final_fit=true", "tracking.enabled=false"],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "model.init_from: loaded" in out.stdout + out.stderr
    run_dir = only_run_dir(tmp_path)
    meta = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    assert meta["class_names"] == NEW_CLASSES
    assert meta["config"]["model"]["init_from"] == str(source_bundle)  # provenance kept in the new bundle
    (fold,) = json.loads((run_dir / "results.json").read_text())["folds"]
    assert fold["val_acc"] >= 2 / 3  # 3 epochs from the tone bundle; chance is 1/3


# --------------------------------------------------------------------------
# Real data


ESC_TRAIN_CLASSES = ["dog", "rooster", "rain"]
ESC_NEW_CLASSES = ["crying_baby", "clock_tick", "sea_waves"]


def esc50_clips(esc50_root: Path, classes: list[str], folds: set[int]) -> list[dict]:
    """Metadata rows of the chosen classes and folds, ``file`` set to the audio file's real name.

    (The metadata names .wav files; a copy may hold another format: match by stem.)
    """
    by_stem = {p.stem: p.name for p in (esc50_root / "audio").iterdir()}
    with open(esc50_root / "meta" / "esc50.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["category"] in classes and int(r["fold"]) in folds]
    return [{**r, "file": by_stem[Path(r["filename"]).stem]} for r in rows]


def esc50_csv(esc50_root: Path, classes: list[str], folds: set[int], target: Path) -> list[dict]:
    rows = esc50_clips(esc50_root, classes, folds)
    with open(target, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["filename", "label", "fold"])
        writer.writeheader()
        writer.writerows({"filename": r["file"], "label": r["category"], "fold": r["fold"]} for r in rows)
    return rows


@pytest.mark.slow
def test_real_esc50_as_your_own_data_predict_a_held_out_fold_then_fine_tune(esc50_root, tmp_path):
    # ESC-50's folds 1-4 of three classes as a CSV dataset (dataset.root is the read-only audio folder).
    esc50_csv(esc50_root, ESC_TRAIN_CLASSES, {1, 2, 3, 4}, tmp_path / "train.csv")
    common = ["dataset=folder", f"dataset.root={esc50_root / 'audio'}", "dataset.num_folds=4",
              "model.width=8", "augmentation=none", "trainer.batch_size=16", "trainer.progress=false",
              "trainer.folds=[1]", "trainer.final_fit=true", "tracking.enabled=false"]
    out = run_cli(common + [f"dataset.csv={tmp_path / 'train.csv'}", "trainer.epochs=6"], cwd=tmp_path, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)

    # Fold 5 was never trained on: copy its clips of the same classes into a folder and predict them.
    held_out = tmp_path / "fold5"
    held_out.mkdir()
    fold5 = esc50_clips(esc50_root, ESC_TRAIN_CLASSES, {5})
    for r in fold5:
        shutil.copy(esc50_root / "audio" / r["file"], held_out / r["file"])
    out = run_cli(["predict", str(run_dir / "bundle"), str(held_out), "--format", "json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    predicted = {Path(p["file"]).name: p["label"] for p in json.loads(out.stdout)["predictions"]}
    accuracy = np.mean([predicted[r["file"]] == r["category"] for r in fold5])
    assert len(fold5) == 24 and accuracy >= 0.5, predicted  # chance is 1/3

    # Transfer: start from that bundle, fine-tune on three other ESC-50 classes.
    esc50_csv(esc50_root, ESC_NEW_CLASSES, {1, 2, 3, 4}, tmp_path / "new.csv")
    fine_tune_dir = tmp_path / "fine_tune"
    fine_tune_dir.mkdir()
    out = run_cli(common + [f"dataset.csv={tmp_path / 'new.csv'}", f"model.init_from={run_dir / 'bundle'}",
                            "trainer.epochs=3"], cwd=fine_tune_dir, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "model.init_from: loaded" in out.stdout + out.stderr
    meta = json.loads((only_run_dir(fine_tune_dir) / "bundle" / "bundle.json").read_text())
    assert meta["class_names"] == sorted(ESC_NEW_CLASSES)
    assert meta["cv"]["cv_val_acc_mean"] > 1 / 3
