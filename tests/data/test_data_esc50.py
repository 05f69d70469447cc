"""ESC-50 loading: the real copy (via ESC50_ROOT) and small generated ESC-50-layout roots."""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from esc_sweep.config import DatasetConfig
from esc_sweep.data import ClipSet, audio, cache, load_clipset
from esc_sweep.data.esc50 import CATEGORIES, NOT_FOUND
from esc_sweep.errors import DataError

SKIP_REASON = "ESC50_ROOT not set; point it at an ESC-50 copy (e.g. ../shared/esc50)"
HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
# (target, category, esc10) of the classes in the generated roots.
FAKE_CLASSES = [(0, "dog", True), (1, "rooster", True), (3, "cow", False), (10, "rain", True), (20, "crying_baby", True)]


def real_root() -> Path:
    root = os.environ.get("ESC50_ROOT")
    if not root:
        pytest.skip(SKIP_REASON)
    return Path(root).expanduser()


class DecodeCounter:
    """Wraps audio.decode to count how many files are decoded."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = audio.decode

        def counting(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(audio, "decode", counting)


def write_rows(root: Path, rows: list[dict], header=HEADER) -> None:
    (root / "meta").mkdir(parents=True, exist_ok=True)
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def make_fake_root(root: Path, clips_per_fold: int = 2, sr: int = 8000, seconds: float = 0.25) -> list[dict]:
    """An ESC-50-layout root with generated tones: 5 classes x 5 folds x clips_per_fold."""
    (root / "audio").mkdir(parents=True)
    rows = []
    for target, category, esc10 in FAKE_CLASSES:
        for fold in range(1, 6):
            for k in range(clips_per_fold):
                src = f"{target:02d}{fold}{k}"
                stem = f"{fold}-{src}-A-{target}"
                t = np.arange(int(sr * seconds)) / sr
                wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * target) * t)
                ext = "flac" if k % 2 else "wav"  # mixed formats: found by stem
                sf.write(root / "audio" / f"{stem}.{ext}", wave.astype(np.float32), sr)
                rows.append(
                    dict(filename=f"{stem}.wav", fold=fold, target=target, category=category,
                         esc10=str(esc10), src_file=src, take="A")
                )
    write_rows(root, rows)
    return rows


def fake_cfg(root: Path, cache_dir: Path, **kw) -> DatasetConfig:
    return DatasetConfig(root=str(root), cache_dir=str(cache_dir), download=False, clip_seconds=0.5, **kw)


@pytest.fixture
def fake(tmp_path):
    root = tmp_path / "esc50"
    rows = make_fake_root(root)
    return root, rows, tmp_path / "cache"


# --------------------------------------------------------------------------
# Real ESC-50 copy (decoded once per test session)


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("esc50_cache")


@pytest.fixture(scope="session")
def real_full(real_cache):
    root = real_root()
    start = time.perf_counter()
    clips = load_clipset(DatasetConfig(root=str(root), cache_dir=str(real_cache)), 16000, progress=False)
    print(f"\n[esc50] first load (decode + cache write) of {len(clips)} clips: {time.perf_counter() - start:.2f} s")
    return clips


def test_real_esc50_full_set(real_full):
    clips = real_full
    assert isinstance(clips, ClipSet)
    assert clips.waveforms.shape == (2000, 80000)
    assert clips.waveforms.dtype == torch.float32 and clips.waveforms.device.type == "cpu"
    assert clips.targets.dtype == torch.int64 and clips.folds.dtype == torch.int64
    assert clips.sample_rate == 16000 and clips.num_folds == 5
    assert clips.num_classes == 50 and len(clips.class_names) == 50
    assert clips.class_names[0] == "dog" and clips.class_names[49] == "hand_saw"
    assert Counter(clips.folds.tolist()) == {f: 400 for f in range(1, 6)}
    assert Counter(clips.targets.tolist()) == {t: 40 for t in range(50)}
    assert len(set(clips.clip_ids)) == 2000 and len(clips.groups) == 2000
    assert len(clips.fingerprint) == 16 and int(clips.fingerprint, 16) >= 0
    assert torch.isfinite(clips.waveforms).all()
    assert clips.waveforms.abs().amax(dim=1).gt(0).sum() > 1990  # real audio, not zeros
    # Rows agree with the csv.
    meta = {Path(r["filename"]).stem: r for r in csv.DictReader(open(real_root() / "meta" / "esc50.csv"))}
    for i in (0, 777, 1999):
        row = meta[clips.clip_ids[i]]
        assert clips.folds[i] == int(row["fold"])
        assert clips.class_names[clips.targets[i]] == row["category"]
        assert clips.groups[i] == row["src_file"]


def test_real_esc50_decoded_audio_matches_the_file(real_full):
    root = real_root()
    i = 123
    path = next((root / "audio").glob(real_full.clip_ids[i] + ".*"))
    data, sr = sf.read(path, dtype="float32")
    assert sr == 16000
    ref = torch.zeros(80000)
    ref[: min(80000, len(data))] = torch.from_numpy(data[:80000])
    assert torch.allclose(real_full.waveforms[i], ref, atol=2e-3)  # float16 cache precision


def test_real_esc50_src_files_never_span_two_folds():
    """ESC-50 keeps all clips of one source recording (within a class) in one fold.

    A handful of freesound ids occur in two *different* classes (e.g. 131943 as
    clock_tick in fold 2 and clock_alarm in fold 3); those are distinct
    recordings of distinct classes, so the guarantee is per (src_file, class).
    """
    root = real_root()
    folds_of: dict[tuple, set] = {}
    classes_of: dict[str, dict] = {}
    for row in csv.DictReader(open(root / "meta" / "esc50.csv")):
        folds_of.setdefault((row["src_file"], row["target"]), set()).add(row["fold"])
        classes_of.setdefault(row["src_file"], {}).setdefault(row["fold"], set()).add(row["target"])
    assert len(folds_of) > 1000
    assert {key: f for key, f in folds_of.items() if len(f) > 1} == {}
    cross = {src: by_fold for src, by_fold in classes_of.items() if len(by_fold) > 1}
    assert len(cross) <= 4
    for by_fold in cross.values():  # same id in two folds only ever across different classes
        targets = [t for ts in by_fold.values() for t in ts]
        assert len(targets) == len(set(targets))


def test_real_esc50_cache_hit_does_not_decode(real_full, real_cache, monkeypatch):
    counter = DecodeCounter(monkeypatch)
    start = time.perf_counter()
    again = load_clipset(DatasetConfig(root=str(real_root()), cache_dir=str(real_cache)), 16000, progress=False)
    print(f"\n[esc50] cache hit load of {len(again)} clips: {time.perf_counter() - start:.2f} s")
    assert counter.calls == 0
    assert again.fingerprint == real_full.fingerprint
    assert torch.equal(again.waveforms, real_full.waveforms)


def test_real_esc50_class_subset_shares_the_cache(real_full, real_cache, monkeypatch):
    counter = DecodeCounter(monkeypatch)
    cfg = DatasetConfig(root=str(real_root()), cache_dir=str(real_cache), classes=["hen", "cow", "frog", "sheep", "rooster"])
    sub = load_clipset(cfg, 16000, progress=False)
    assert counter.calls == 0  # served from the full-set cache
    assert sub.waveforms.shape == (200, 80000)
    # Remapped to 0..4 in order of the original target ids (rooster 1, cow 3, frog 4, hen 6, sheep 8).
    assert sub.class_names == ["rooster", "cow", "frog", "hen", "sheep"]
    assert Counter(sub.targets.tolist()) == {t: 40 for t in range(5)}
    assert Counter(sub.folds.tolist()) == {f: 40 for f in range(1, 6)}
    assert sub.fingerprint != real_full.fingerprint
    row = real_full.clip_ids.index(sub.clip_ids[7])
    assert torch.equal(sub.waveforms[7], real_full.waveforms[row])
    assert real_full.class_names[real_full.targets[row]] == sub.class_names[sub.targets[7]]


def test_real_esc50_unknown_class_name_is_reported(real_cache):
    cfg = DatasetConfig(root=str(real_root()), cache_dir=str(real_cache), classes=["chicken", "cow"])
    with pytest.raises(DataError, match=r"unknown class\(es\) chicken.*valid names include"):
        load_clipset(cfg, 16000, progress=False)


def test_real_esc50_categories(real_full, real_cache, monkeypatch):
    counter = DecodeCounter(monkeypatch)
    cats = load_clipset(DatasetConfig(root=str(real_root()), cache_dir=str(real_cache), label="category"), 16000, progress=False)
    assert counter.calls == 0
    assert cats.class_names == list(CATEGORIES)
    assert Counter(cats.targets.tolist()) == {c: 400 for c in range(5)}
    assert torch.equal(cats.targets, real_full.targets // 10)
    assert cats.fingerprint != real_full.fingerprint


def test_real_esc50_esc10(real_cache, real_full, monkeypatch):
    counter = DecodeCounter(monkeypatch)
    esc10 = load_clipset(DatasetConfig(root=str(real_root()), cache_dir=str(real_cache), esc10=True), 16000, progress=False)
    assert counter.calls == 0
    assert esc10.waveforms.shape == (400, 80000) and esc10.num_classes == 10
    assert "dog" in esc10.class_names and "chainsaw" in esc10.class_names
    assert Counter(esc10.targets.tolist()) == {t: 40 for t in range(10)}


def test_real_files_resample_to_other_rates(tmp_path):
    """A tiny ESC-50-layout root made of a few real clips, loaded at 8, 16 and 22.05 kHz."""
    src = real_root()
    rows = list(csv.DictReader(open(src / "meta" / "esc50.csv")))
    rows = [r for r in rows if r["target"] == "0"][:4] + [r for r in rows if r["target"] == "40"][:4]
    root = tmp_path / "mini"
    (root / "audio").mkdir(parents=True)
    for r in rows:
        stem = Path(r["filename"]).stem
        path = next((src / "audio").glob(stem + ".*"))
        shutil.copy(path, root / "audio" / path.name)
    write_rows(root, rows)
    loaded = {}
    for sr in (8000, 16000, 22050):
        clips = load_clipset(DatasetConfig(root=str(root), cache_dir=str(tmp_path / "c")), sr, progress=False)
        assert clips.waveforms.shape == (len(rows), 5 * sr)
        assert clips.sample_rate == sr
        loaded[sr] = clips.waveforms
    # Same sound at every rate: the loudness agrees (8 kHz loses only content above 4 kHz).
    for sr in (8000, 22050):
        ratio = loaded[sr].pow(2).mean(1).sqrt() / loaded[16000].pow(2).mean(1).sqrt().clamp_min(1e-6)
        assert ratio.max() < 1.05 and ratio.min() > (0.2 if sr == 8000 else 0.95)
    # Upsampling then comparing at the original sample positions keeps the waveform.
    up = loaded[22050]
    back = torch.nn.functional.interpolate(up[:, None, :], size=80000, mode="linear", align_corners=False)[:, 0]
    err = (back - loaded[16000]).pow(2).mean().sqrt() / loaded[16000].pow(2).mean().sqrt()
    assert err < 0.3


# --------------------------------------------------------------------------
# Generated ESC-50-layout roots (always run)


def test_fake_root_loads_with_labels_folds_and_groups(fake):
    root, rows, cache_dir = fake
    clips = load_clipset(fake_cfg(root, cache_dir), 8000, progress=False)
    assert clips.waveforms.shape == (50, 4000)  # 0.25 s files padded to clip_seconds=0.5
    assert torch.count_nonzero(clips.waveforms[:, 2000:]) == 0
    assert clips.class_names == ["dog", "rooster", "cow", "rain", "crying_baby"]
    assert Counter(clips.targets.tolist()) == {t: 10 for t in range(5)}
    assert Counter(clips.folds.tolist()) == {f: 10 for f in range(1, 6)}
    assert clips.clip_ids == [Path(r["filename"]).stem for r in rows]
    assert clips.groups == [r["src_file"] for r in rows]


def test_cache_is_used_on_second_load_and_shared_by_subsets(fake, monkeypatch):
    root, rows, cache_dir = fake
    counter = DecodeCounter(monkeypatch)
    first = load_clipset(fake_cfg(root, cache_dir), 8000, progress=False)
    assert counter.calls == 50
    files = sorted(p.name for p in cache_dir.iterdir())
    assert len([f for f in files if f.endswith(".pt")]) == 1
    assert not [f for f in files if f.endswith(".tmp")]  # atomic write left nothing behind

    second = load_clipset(fake_cfg(root, cache_dir), 8000, progress=False)
    assert counter.calls == 50
    assert torch.equal(first.waveforms, second.waveforms) and first.fingerprint == second.fingerprint

    sub = load_clipset(fake_cfg(root, cache_dir, classes=["rain", "dog"]), 8000, progress=False)
    assert counter.calls == 50  # subset served from the full-set cache
    assert sub.class_names == ["dog", "rain"] and Counter(sub.targets.tolist()) == {0: 10, 1: 10}

    other_rate = load_clipset(fake_cfg(root, cache_dir), 16000, progress=False)
    assert counter.calls == 100 and other_rate.waveforms.shape == (50, 8000)
    assert other_rate.fingerprint != first.fingerprint

    # A changed file invalidates the cache.
    victim = next((root / "audio").glob(rows[0]["filename"].replace(".wav", ".*")))
    sf.write(victim, np.zeros(3000, dtype=np.float32), 8000)
    changed = load_clipset(fake_cfg(root, cache_dir), 8000, progress=False)
    assert counter.calls == 150
    assert torch.count_nonzero(changed.waveforms[0]) == 0
    assert changed.fingerprint != first.fingerprint


def test_cache_dir_defaults_to_env_var(fake, tmp_path, monkeypatch):
    root, _, _ = fake
    env_cache = tmp_path / "env_cache"
    monkeypatch.setenv("ESC_SWEEP_CACHE", str(env_cache))
    load_clipset(DatasetConfig(root=str(root), clip_seconds=0.5), 8000, progress=False)
    assert len(list(env_cache.glob("esc50-*.pt"))) == 1
    assert cache.default_cache_dir(None) == env_cache
    monkeypatch.delenv("ESC_SWEEP_CACHE")
    assert cache.default_cache_dir(None) == Path.home() / ".cache" / "esc_sweep" / "waveforms"


def test_corrupt_cache_file_is_rebuilt(fake, monkeypatch):
    root, _, cache_dir = fake
    first = load_clipset(fake_cfg(root, cache_dir), 8000, progress=False)
    (pt,) = cache_dir.glob("*.pt")
    pt.write_bytes(b"garbage")
    counter = DecodeCounter(monkeypatch)
    again = load_clipset(fake_cfg(root, cache_dir), 8000, progress=False)
    assert counter.calls == 50
    assert torch.equal(again.waveforms, first.waveforms)


def test_cache_stores_float16(fake):
    root, _, cache_dir = fake
    load_clipset(fake_cfg(root, cache_dir), 8000, progress=False)
    (pt,) = cache_dir.glob("*.pt")
    payload = torch.load(pt, weights_only=True)
    assert payload["waveforms"].dtype == torch.float16 and payload["waveforms"].shape == (50, 4000)


def test_progress_bar_is_labelled(fake, monkeypatch):
    # On a terminal the bar shows at once (plain log lines wait until a phase has run a second).
    import io

    from rich.console import Console

    import esc_sweep.console

    screen = io.StringIO()
    monkeypatch.setattr(esc_sweep.console, "console", Console(file=screen, force_terminal=True, width=120))
    root, _, cache_dir = fake
    load_clipset(fake_cfg(root, cache_dir), 8000, progress=True)
    assert "Decoding ESC-50" in screen.getvalue()


def test_category_labels_and_esc10_on_fake_root(fake):
    root, _, cache_dir = fake
    cats = load_clipset(fake_cfg(root, cache_dir, label="category"), 8000, progress=False)
    # dog, rooster, cow -> animals; rain -> natural_soundscapes; crying_baby -> human_non_speech
    assert cats.class_names == ["animals", "natural_soundscapes", "human_non_speech"]
    assert Counter(cats.targets.tolist()) == {0: 30, 1: 10, 2: 10}
    esc10 = load_clipset(fake_cfg(root, cache_dir, esc10=True), 8000, progress=False)
    assert esc10.class_names == ["dog", "rooster", "rain", "crying_baby"] and len(esc10) == 40
    with pytest.raises(DataError, match=r"cow are not in the ESC-10 subset"):
        load_clipset(fake_cfg(root, cache_dir, esc10=True, classes=["cow", "dog"]), 8000, progress=False)


def test_subset_keeps_classes_and_selects_rows(fake):
    root, _, cache_dir = fake
    clips = load_clipset(fake_cfg(root, cache_dir), 8000, progress=False)
    train = clips.subset(clips.folds != 1)
    assert len(train) == 40 and train.class_names == clips.class_names
    assert (train.folds != 1).all()
    idx = torch.tensor([3, 0, 49])
    picked = clips.subset(idx)
    assert picked.clip_ids == [clips.clip_ids[i] for i in (3, 0, 49)]
    assert torch.equal(picked.waveforms, clips.waveforms[idx])
    assert torch.equal(picked.targets, clips.targets[idx]) and picked.groups[2] == clips.groups[49]
    assert picked.num_classes == 5 and picked.fingerprint != clips.fingerprint


def test_dict_config_is_accepted(fake):
    from omegaconf import OmegaConf

    root, _, cache_dir = fake
    cfg = OmegaConf.structured(fake_cfg(root, cache_dir, classes=["cow", "dog"]))
    clips = load_clipset(cfg, 8000, progress=False)
    assert clips.class_names == ["dog", "cow"] and len(clips) == 20


# --------------------------------------------------------------------------
# Errors


def test_no_root_and_no_download_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.delenv("ESC50_ROOT", raising=False)
    with pytest.raises(DataError) as info:
        load_clipset(DatasetConfig(download=False, cache_dir=str(tmp_path)), 16000)
    assert str(info.value) == NOT_FOUND


def test_env_var_root_is_used(fake, monkeypatch):
    root, _, cache_dir = fake
    monkeypatch.setenv("ESC50_ROOT", str(root))
    clips = load_clipset(DatasetConfig(cache_dir=str(cache_dir), clip_seconds=0.5, download=False), 8000, progress=False)
    assert len(clips) == 50
    monkeypatch.setenv("ESC50_ROOT", str(root / "nowhere"))
    with pytest.raises(DataError, match=r"nowhere \(from ESC50_ROOT\) does not exist"):
        load_clipset(DatasetConfig(cache_dir=str(cache_dir), download=False), 8000)


def test_tilde_in_root_is_expanded(fake, monkeypatch):
    root, _, cache_dir = fake
    monkeypatch.setenv("HOME", str(root.parent))
    clips = load_clipset(DatasetConfig(root="~/esc50", cache_dir=str(cache_dir), clip_seconds=0.5), 8000, progress=False)
    assert len(clips) == 50


def test_root_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"ESC-50 root .*missing_root.* does not exist"):
        load_clipset(DatasetConfig(root=str(tmp_path / "missing_root")), 16000)
    (tmp_path / "no_meta").mkdir()
    with pytest.raises(DataError, match=r"no_meta .*has no meta/esc50.csv"):
        load_clipset(DatasetConfig(root=str(tmp_path / "no_meta")), 16000)


def test_missing_columns_are_listed(fake):
    root, rows, cache_dir = fake
    write_rows(root, rows, header=["filename", "fold", "category"])
    with pytest.raises(DataError, match=r"lacks column\(s\) target, src_file"):
        load_clipset(fake_cfg(root, cache_dir), 8000)


def test_duplicate_stems_are_rejected(fake):
    root, rows, cache_dir = fake
    dup = dict(rows[3], filename=rows[3]["filename"].replace(".wav", ".flac"))
    write_rows(root, rows + [dup])
    stem = Path(rows[3]["filename"]).stem
    with pytest.raises(DataError, match=rf"lists clip '{stem}' twice"):
        load_clipset(fake_cfg(root, cache_dir), 8000)


def test_folds_outside_one_to_five_are_rejected(fake):
    root, rows, cache_dir = fake
    rows[0]["fold"] = 6
    rows[1]["fold"] = 0
    write_rows(root, rows)
    with pytest.raises(DataError, match=r"2 clip\(s\) have a fold outside 1..5"):
        load_clipset(fake_cfg(root, cache_dir), 8000)


def test_missing_audio_files_are_counted_and_named(fake):
    root, rows, cache_dir = fake
    gone = []
    for r in rows[:7]:
        stem = Path(r["filename"]).stem
        for p in (root / "audio").glob(stem + ".*"):
            p.unlink()
        gone.append(stem)
    with pytest.raises(DataError) as info:
        load_clipset(fake_cfg(root, cache_dir), 8000)
    msg = str(info.value)
    assert msg.startswith("7 of 50 clips listed in") and gone[0] in msg and gone[4] in msg
    assert gone[6] not in msg and ", ..." in msg  # only the first few are listed


def test_broken_audio_file_is_named(fake):
    root, rows, cache_dir = fake
    stem = Path(rows[5]["filename"]).stem
    (victim,) = (root / "audio").glob(stem + ".*")
    victim.write_text("not audio")
    with pytest.raises(DataError, match=rf"cannot decode audio file .*{stem}"):
        load_clipset(fake_cfg(root, cache_dir), 8000)
    assert not list(cache_dir.glob("*.pt"))  # nothing cached from a failed decode


def test_unknown_classes_are_listed_with_suggestions(fake):
    root, _, cache_dir = fake
    with pytest.raises(DataError, match=r"unknown class\(es\) dgo, cat .*valid names include dog"):
        load_clipset(fake_cfg(root, cache_dir, classes=["dgo", "cat", "cow"]), 8000)


def test_bad_values_in_csv(fake):
    root, rows, cache_dir = fake
    rows[2]["target"] = "x"
    write_rows(root, rows)
    with pytest.raises(DataError, match=r"esc50.csv line 4: target 'x' is not an integer"):
        load_clipset(fake_cfg(root, cache_dir), 8000)
