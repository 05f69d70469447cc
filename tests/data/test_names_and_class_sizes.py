"""Folder datasets: file names that are not UTF-8, and classes with fewer clips than folds.

* A clip whose name is not valid UTF-8 (Linux gives Python its stray bytes as surrogates)
  is fingerprinted, cached, trained on and predicted; outputs show it with ``\\xNN`` escapes.
* A class with fewer clips than ``dataset.num_folds`` is refused in one line naming it, in both
  layouts (class sub-folders, a CSV with or without a fold column): generated class sizes.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esc_sweep.app import predict
from esc_sweep.bundle import save_bundle
from esc_sweep.config import FolderDatasetConfig
from esc_sweep.data import load_clipset
from esc_sweep.data.cache import content_digests, files_fingerprint
from esc_sweep.errors import DataError
from esc_sweep.models import create_model
from esc_sweep.paths import write_text_atomically
from tests.conftest import FAST_SYNTHETIC, compose_config

SR = 8000
ODD = b"caf\xe9-\xff"  # Latin-1 bytes: not UTF-8


def _tone(freq: float, seconds: float = 0.25) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write(path: bytes, freq: float) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:  # a bytes path: the name stays exactly these bytes
        sf.write(handle, _tone(freq), SR, format="WAV", subtype="PCM_16")


def _odd_tree(root: Path, clips: int = 5) -> Path:
    base = os.fsencode(root)
    for c, name in enumerate((b"dog", b"cat" + ODD)):
        for i in range(clips):
            stem = ODD + b"%d" % i if i < 2 else b"clip%d" % i
            _write(base + b"/" + name + b"/" + stem + b".wav", 300 + 400 * c + 9 * i)
    return root


def _cfg(root: Path, tmp_path: Path, **kw) -> FolderDatasetConfig:
    kw.setdefault("clip_seconds", 0.25)
    return FolderDatasetConfig(name="mine", root=str(root), cache_dir=str(tmp_path / "cache"), **kw)


def test_non_utf8_names_are_fingerprinted_cached_and_loaded(tmp_path):
    root = _odd_tree(tmp_path / "sounds")
    first = load_clipset(_cfg(root, tmp_path), SR, progress=False)
    again = load_clipset(_cfg(root, tmp_path), SR, progress=False)  # from the waveform cache
    assert first.fingerprint == again.fingerprint and torch.equal(first.waveforms, again.waveforms)
    assert len(first) == 10 and first.class_names == ["cat" + "caf\\xe9-\\xff", "dog"]
    assert "dog/caf\\xe9-\\xff0" in first.clip_ids
    for text in first.clip_ids + first.class_names:
        text.encode("utf-8")  # every id and label is valid text (logs, MLflow, figures)
    paths = sorted((root / "dog").iterdir())
    fingerprint = files_fingerprint(paths, root, content_digests(paths, root, tmp_path / "memo"))
    assert fingerprint == files_fingerprint(paths, root)  # the digest memo round-trips the names
    renamed = root / "dog" / os.fsdecode(ODD + b"0.wav")
    renamed.rename(root / "dog" / "plain.wav")
    assert load_clipset(_cfg(root, tmp_path), SR, progress=False).fingerprint != first.fingerprint


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    cfg = compose_config(FAST_SYNTHETIC + ["tracking.enabled=false", "dataset.num_classes=2"])
    model = create_model(cfg.model, 2, cfg.features.normalize, cfg.features.n_mels)
    return save_bundle(tmp_path_factory.mktemp("bundle") / "bundle", model, cfg, ["cat", "dog"])


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_predict_over_non_utf8_names_writes_valid_text_and_no_partial_file(small_bundle, tmp_path, fmt):
    root = _odd_tree(tmp_path / "sounds", clips=2)
    target = tmp_path / f"out.{fmt}"
    predict.main([str(small_bundle), str(root), "--format", fmt, "--output", str(target)])
    text = target.read_bytes().decode("utf-8")  # strict: valid UTF-8
    shown = "caf\\xe9-\\xff0.wav"
    if fmt == "csv":
        files = [row["file"] for row in csv.DictReader(text.splitlines())]
        assert any(f.endswith("dog/" + shown) for f in files) and len(set(files)) == 4
    elif fmt == "json":
        files = [p["file"] for p in json.loads(text)["predictions"]]
        assert any(f.endswith("dog/" + shown) for f in files) and len(files) == 4
    else:
        assert shown in " ".join(text.split()) or "caf\\xe9" in text
    assert not list(tmp_path.glob(".*.partial"))


def test_text_that_cannot_be_written_leaves_no_partial_file(tmp_path):
    with pytest.raises(UnicodeEncodeError):
        write_text_atomically(tmp_path / "out.csv", "file\n" + os.fsdecode(b"\xff"))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# Classes with fewer clips than folds


def _sized_tree(root: Path, sizes: list[int]) -> list[str]:
    names = [f"class{c}" for c in range(len(sizes))]
    for c, (name, size) in enumerate(zip(names, sizes)):
        (root / name).mkdir(parents=True)
        for i in range(size):
            sf.write(root / name / f"{i:02d}.wav", _tone(250 + 300 * c + 11 * i), SR, subtype="PCM_16")
    return names


def _write_csv(root: Path, names: list[str], sizes: list[int], folds: int | None) -> Path:
    path = root / "labels.csv"
    rows, k = [], 0
    for name, size in zip(names, sizes):
        for i in range(size):
            rows.append([f"{name}/{i:02d}.wav", name] + ([k % folds + 1] if folds else []))
            k += 1
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label"] + (["fold"] if folds else []))
        writer.writerows(rows)
    return path


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=3), num_folds=st.integers(2, 5),
       layout=st.sampled_from(["sub-folders", "csv", "csv with folds"]), data=st.data())
def test_a_class_with_fewer_clips_than_folds_is_refused_naming_it(tmp_path_factory, sizes, num_folds, layout, data):
    tmp = tmp_path_factory.mktemp("sizes")
    root = tmp / "sounds"
    names = _sized_tree(root, sizes)
    chosen = data.draw(st.one_of(st.none(), st.lists(st.sampled_from(names), min_size=2, max_size=len(names),
                                                     unique=True)))
    extra = {"classes": chosen} if chosen else {}
    if layout != "sub-folders":
        extra["csv"] = str(_write_csv(root, names, sizes, num_folds if layout == "csv with folds" else None))
    used = [(n, s) for n, s in zip(names, sizes) if chosen is None or n in chosen]
    short = [n for n, s in used if s < num_folds]
    try:
        clips = load_clipset(_cfg(root, tmp, num_folds=num_folds, **extra), SR, progress=False)
    except DataError as err:
        message = str(err)
        assert "\n" not in message
        assert short or sum(sizes) < num_folds, f"refused although every class has {num_folds}+ clips: {message}"
        if short and "fewer clips than" in message:
            assert all(f"'{n}'" in message for n in short[:5]) and "dataset.num_folds" in message
        return
    assert not short, f"loaded although {short} have fewer clips than {num_folds} folds"
    assert clips.num_folds == num_folds


def test_a_dataset_root_that_is_not_utf8_on_the_command_line_is_one_line_naming_it():
    from esc_sweep.cli import check_override_encoding
    from esc_sweep.errors import ConfigError

    check_override_encoding(["dataset=folder", "dataset.root=/data/café"])  # valid UTF-8 passes
    with pytest.raises(ConfigError) as refused:
        check_override_encoding(["dataset=folder", "dataset.root=" + os.fsdecode(b"/data/caf\xe9")])
    assert str(refused.value).startswith("dataset.root=/data/caf\\xe9: Hydra cannot read")
    assert "ln -s" in str(refused.value)
