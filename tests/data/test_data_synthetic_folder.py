"""Synthetic tones and own-folder datasets."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from esc_sweep.config import DatasetConfig, FolderDatasetConfig, SyntheticDatasetConfig
from esc_sweep.data import load_clipset
from esc_sweep.errors import DataError


def synth(**kw) -> SyntheticDatasetConfig:
    kw.setdefault("clip_seconds", 1.0)
    return SyntheticDatasetConfig(**kw)


def dominant_hz(waves: torch.Tensor, sr: int) -> torch.Tensor:
    spec = torch.fft.rfft(waves).abs()
    return spec.argmax(dim=-1).double() * sr / waves.shape[-1]


# --------------------------------------------------------------------------
# Synthetic


def test_synthetic_shapes_names_and_folds():
    clips = load_clipset(synth(num_classes=4, clips_per_class=10, num_folds=5), 16000)
    assert clips.waveforms.shape == (40, 16000) and clips.waveforms.dtype == torch.float32
    assert clips.targets.dtype == torch.int64 and clips.folds.dtype == torch.int64
    assert clips.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert clips.num_classes == 4 and clips.num_folds == 5 and clips.sample_rate == 16000
    assert len(set(clips.clip_ids)) == 40 and clips.groups == clips.clip_ids
    assert torch.isfinite(clips.waveforms).all() and clips.waveforms.abs().max() < 1.0
    # Round-robin within class: every fold holds 2 clips of every class.
    pairs = Counter(zip(clips.folds.tolist(), clips.targets.tolist()))
    assert pairs == {(f, c): 2 for f in range(1, 6) for c in range(4)}


def test_synthetic_uneven_clips_per_fold_stay_balanced():
    clips = load_clipset(synth(num_classes=3, clips_per_class=7, num_folds=5), 8000)
    assert clips.waveforms.shape == (21, 8000)
    for c in range(3):
        per_fold = Counter(clips.folds[clips.targets == c].tolist())
        assert per_fold == {1: 2, 2: 2, 3: 1, 4: 1, 5: 1}


def test_synthetic_is_deterministic_from_its_seed():
    a = load_clipset(synth(synthetic_seed=3), 16000)
    b = load_clipset(synth(synthetic_seed=3), 16000)
    c = load_clipset(synth(synthetic_seed=4), 16000)
    assert torch.equal(a.waveforms, b.waveforms) and a.fingerprint == b.fingerprint
    assert not torch.allclose(a.waveforms, c.waveforms) and a.fingerprint != c.fingerprint
    assert torch.equal(a.targets, c.targets) and torch.equal(a.folds, c.folds)


def test_synthetic_classes_are_separable_by_pitch():
    for sr in (8000, 16000):
        clips = load_clipset(synth(num_classes=8, clips_per_class=10), sr)
        peak = dominant_hz(clips.waveforms, sr)
        for c in range(7):  # every clip of class c sits below every clip of class c+1
            assert peak[clips.targets == c].max() < peak[clips.targets == c + 1].min()
    # Clips differ within a class (random amplitude, phase, onset, noise).
    same = clips.waveforms[clips.targets == 0]
    assert not torch.allclose(same[0], same[1])
    onsets = (same.abs() > 0.05).float().argmax(dim=1)
    assert onsets.unique().numel() > 1


def test_synthetic_class_subset_and_errors():
    sub = load_clipset(synth(classes=["class_3", "class_1"]), 16000)
    assert sub.class_names == ["class_1", "class_3"] and len(sub) == 40
    assert Counter(sub.targets.tolist()) == {0: 20, 1: 20}
    with pytest.raises(DataError, match=r"unknown class\(es\) dog"):
        load_clipset(synth(classes=["dog"]), 16000)
    with pytest.raises(DataError, match=r"clips_per_class=3 is less than dataset.num_folds=5"):
        load_clipset(synth(clips_per_class=3), 16000)
    with pytest.raises(DataError, match=r"dataset.label='category' is only defined for ESC-50"):
        load_clipset(synth(label="category"), 16000)


# --------------------------------------------------------------------------
# Folder datasets


def write_tone(path: Path, freq: float, sr: int = 8000, seconds: float = 0.2, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sr * seconds)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, **kw)


def folder_cfg(root: Path, tmp_path: Path, **kw) -> FolderDatasetConfig:
    kw.setdefault("clip_seconds", 0.25)
    return FolderDatasetConfig(name="mine", root=str(root), cache_dir=str(tmp_path / "cache"), **kw)


@pytest.fixture
def subfolder_root(tmp_path):
    root = tmp_path / "sounds"
    for i in range(10):
        write_tone(root / "dog" / f"{i:03d}.wav", 300)
        write_tone(root / "cat" / f"{i:03d}.flac", 600)
        write_tone(root / "bird" / "nested" / f"b{i}.ogg", 1200, sr=16000)
    (root / "README.txt").write_text("not audio")
    (root / "dog" / "notes.txt").write_text("ignored")
    return root


def test_folder_subfolders(subfolder_root, tmp_path):
    clips = load_clipset(folder_cfg(subfolder_root, tmp_path), 8000, progress=False)
    assert clips.class_names == ["bird", "cat", "dog"]  # sorted
    assert clips.waveforms.shape == (30, 2000)
    assert Counter(clips.targets.tolist()) == {0: 10, 1: 10, 2: 10}
    # Same file name in two classes: clip ids stay unique.
    assert "cat/000" in clips.clip_ids and "dog/000" in clips.clip_ids and "bird/nested/b3" in clips.clip_ids
    assert len(set(clips.clip_ids)) == 30
    peak = dominant_hz(clips.waveforms, 8000)
    for t, hz in enumerate((1200, 600, 300)):
        assert torch.allclose(peak[clips.targets == t], torch.full((10,), float(hz), dtype=torch.float64), atol=8)
    # Stratified folds: 2 clips of each class in each of 5 folds.
    pairs = Counter(zip(clips.folds.tolist(), clips.targets.tolist()))
    assert pairs == {(f, c): 2 for f in range(1, 6) for c in range(3)}
    # Deterministic (seed 0) and served from the cache on the second load.
    again = load_clipset(folder_cfg(subfolder_root, tmp_path), 8000, progress=False)
    assert torch.equal(again.folds, clips.folds) and again.fingerprint == clips.fingerprint


def test_folder_stratified_folds_uneven_classes(tmp_path):
    root = tmp_path / "uneven"
    for i in range(23):
        write_tone(root / "a" / f"{i}.wav", 300)
    for i in range(7):
        write_tone(root / "b" / f"{i}.wav", 900)
    clips = load_clipset(folder_cfg(root, tmp_path, num_folds=5), 8000, progress=False)
    for c, n in ((0, 23), (1, 7)):
        counts = Counter(clips.folds[clips.targets == c].tolist())
        assert set(counts) <= set(range(1, 6)) and sum(counts.values()) == n
        assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == (5 if n >= 5 else n)


def test_folder_csv_with_folds(tmp_path):
    root = tmp_path / "csvroot"
    rows = []
    for i in range(12):
        label = ["siren", "horn", "engine"][i % 3]
        rel = f"clips/{label}_{i}.wav"
        write_tone(root / rel, 200 + 100 * (i % 3))
        rows.append({"filename": rel, "label": label, "fold": i % 4 + 1})
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["filename", "label", "fold"])
        w.writeheader()
        w.writerows(rows)
    clips = load_clipset(folder_cfg(root, tmp_path, csv="labels.csv", num_folds=4), 8000, progress=False)
    assert clips.class_names == ["engine", "horn", "siren"]
    assert clips.folds.tolist() == [r["fold"] for r in rows]
    assert [clips.class_names[t] for t in clips.targets.tolist()] == [r["label"] for r in rows]
    assert clips.clip_ids[0] == "clips/siren_0"
    # An absolute CSV path works too.
    again = load_clipset(folder_cfg(root, tmp_path, csv=str(root / "labels.csv"), num_folds=4), 8000, progress=False)
    assert again.fingerprint == clips.fingerprint

    rows[5]["fold"] = 9
    with open(root / "bad_fold.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["filename", "label", "fold"])
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match=r"bad_fold.csv line 7: fold 9 is outside 1..4"):
        load_clipset(folder_cfg(root, tmp_path, csv="bad_fold.csv", num_folds=4), 8000, progress=False)


def test_folder_csv_without_folds_is_stratified(tmp_path):
    root = tmp_path / "nofold"
    lines = ["filename,label"]
    for i in range(20):
        label = "x" if i < 10 else "y"
        write_tone(root / f"{i}.wav", 300 if label == "x" else 700)
        lines.append(f"{i}.wav,{label}")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    clips = load_clipset(folder_cfg(root, tmp_path, csv="meta.csv"), 8000, progress=False)
    pairs = Counter(zip(clips.folds.tolist(), clips.targets.tolist()))
    assert pairs == {(f, c): 2 for f in range(1, 6) for c in range(2)}


def test_folder_errors(tmp_path, subfolder_root):
    with pytest.raises(DataError, match=r"dataset.root is not set"):
        load_clipset(FolderDatasetConfig(), 8000)
    with pytest.raises(DataError, match=r"nope does not exist"):
        load_clipset(folder_cfg(tmp_path / "nope", tmp_path), 8000)
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty has no audio files in class sub-folders"):
        load_clipset(folder_cfg(empty, tmp_path), 8000)
    (subfolder_root / "a.csv").write_text("file,cls\nx.wav,dog\n")
    with pytest.raises(DataError, match=r"a.csv lacks column\(s\) filename, label"):
        load_clipset(folder_cfg(subfolder_root, tmp_path, csv="a.csv"), 8000)
    (subfolder_root / "b.csv").write_text("filename,label\ndog/000.wav,dog\ndog/404.wav,dog\n")
    with pytest.raises(DataError, match=r"1 of 2 files listed in .*b.csv are missing .*dog/404.wav"):
        load_clipset(folder_cfg(subfolder_root, tmp_path, csv="b.csv"), 8000)
    with pytest.raises(DataError, match=r"dataset.csv .*missing.csv does not exist"):
        load_clipset(folder_cfg(subfolder_root, tmp_path, csv="missing.csv"), 8000)
    with pytest.raises(DataError, match=r"cannot fill dataset.num_folds=20 folds"):
        load_clipset(folder_cfg(subfolder_root, tmp_path, num_folds=20), 8000)
    with pytest.raises(DataError, match=r"unknown class\(es\) cow"):
        load_clipset(folder_cfg(subfolder_root, tmp_path, classes=["cow"]), 8000)
    (subfolder_root / "dog" / "broken.wav").write_bytes(b"RIFF")
    with pytest.raises(DataError, match=r"dog/broken.wav"):
        load_clipset(folder_cfg(subfolder_root, tmp_path), 8000, progress=False)


def test_folder_class_subset(subfolder_root, tmp_path):
    sub = load_clipset(folder_cfg(subfolder_root, tmp_path, classes=["dog", "bird"]), 8000, progress=False)
    assert sub.class_names == ["bird", "dog"] and len(sub) == 20
    assert sorted(set(sub.targets.tolist())) == [0, 1]
