"""UrbanSound8K and FSDKaggle2018 in their official layouts, the holdout protocol, variable-length clips."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esc_sweep.config import FolderDatasetConfig, FSDKaggle2018DatasetConfig, UrbanSound8KDatasetConfig
from esc_sweep.data import audio, load_clipset
from esc_sweep.data.ragged import RaggedWaveforms, decode_ragged, decode_whole
from esc_sweep.errors import DataError, DownloadError
from esc_sweep.training.metrics import map_at_k
from tests.data.official_layouts import (
    US8K_CLASSES,
    make_fsdkaggle2018,
    make_urbansound8k,
    tar_gz_of,
)
from tests.data.test_download import server  # noqa: F401  (the local HTTP server fixture)

RATE = 8000


@pytest.fixture(scope="module")
def us8k(tmp_path_factory):
    return make_urbansound8k(tmp_path_factory.mktemp("us8k"))


def us8k_config(root, tmp_path, **kw):
    return UrbanSound8KDatasetConfig(root=str(root), cache_dir=str(tmp_path / "cache"), **kw)


def test_urbansound8k_official_layout_loads_with_its_folds_classes_and_recordings(us8k, tmp_path):
    clips = load_clipset(us8k_config(us8k, tmp_path), RATE, progress=False)
    assert clips.class_names == US8K_CLASSES  # ordered by classID, as released
    assert clips.num_folds == 10 and sorted(set(clips.folds.tolist())) == list(range(1, 11))
    assert clips.waveforms.shape == (100, 4 * RATE)  # zero-padded to 4 s
    # Target t is classID t: the slice name carries it ("<fsID>-<classID>-0-<k>.wav").
    assert [int(c.split("-")[1]) for c in clips.clip_ids] == clips.targets.tolist()
    assert clips.groups[0] == clips.clip_ids[0].split("-")[0]  # fsID
    # A short clip is padded with zeros after its end.
    short = next(i for i, c in enumerate(clips.clip_ids) if clips.waveforms[i, -100:].abs().max() == 0)
    assert clips.waveforms[short, :100].abs().max() > 0


def test_urbansound8k_class_subset_and_protocol_errors(us8k, tmp_path):
    clips = load_clipset(us8k_config(us8k, tmp_path, classes=["siren", "dog_bark"]), RATE, progress=False)
    assert clips.class_names == ["dog_bark", "siren"] and len(clips) == 20
    with pytest.raises(DataError, match="UrbanSound8K has no train/test split"):
        load_clipset(us8k_config(us8k, tmp_path, protocol="holdout"), RATE, progress=False)
    # dataset.variable_length: the same clips kept whole (up to 4 s), folds and targets unchanged.
    whole = load_clipset(us8k_config(us8k, tmp_path, variable_length=True), RATE, progress=False)
    fixed = load_clipset(us8k_config(us8k, tmp_path), RATE, progress=False)
    assert torch.equal(whole.folds, fixed.folds) and torch.equal(whole.targets, fixed.targets)
    assert whole.waveforms.shape == (100, 0) and whole.num_samples == 4 * RATE
    assert int(whole.ragged.lengths.max()) == 4 * RATE and int(whole.ragged.lengths.min()) == RATE // 2
    assert whole.fingerprint != fixed.fingerprint


def test_urbansound8k_missing_clip_and_missing_metadata_are_named(tmp_path):
    root = make_urbansound8k(tmp_path / "a", classes=["dog_bark", "siren"])
    victim = next((root / "audio" / "fold3").iterdir())
    victim.unlink()
    with pytest.raises(DataError, match=rf"1 of 20 clips .* fold3/{victim.name}"):
        load_clipset(us8k_config(root, tmp_path), RATE, progress=False)
    with pytest.raises(DataError, match=r"has no metadata/UrbanSound8K.csv"):
        load_clipset(us8k_config(root / "audio", tmp_path), RATE, progress=False)


def test_urbansound8k_download_is_md5_verified_resumed_and_extracted(server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("URBANSOUND8K_ROOT", raising=False)
    tree = make_urbansound8k(tmp_path / "src", classes=["dog_bark", "siren"])
    data = tar_gz_of(tree, tmp_path / "UrbanSound8K.tar.gz").read_bytes()
    server.files["/UrbanSound8K.tar.gz?download=1"] = data  # the official URL's form
    url = server.url("/UrbanSound8K.tar.gz?download=1")
    cfg = dict(root=None, download_dir=str(tmp_path / "dl"), cache_dir=str(tmp_path / "cache"), url=url)

    # A wrong MD5: the archive is deleted and the error names both digests.
    with pytest.raises(DownloadError, match=r"expected md5 0{32}, got " + hashlib.md5(data).hexdigest()):
        load_clipset(UrbanSound8KDatasetConfig(**cfg, archive_md5="0" * 32), RATE, progress=False)
    assert not list((tmp_path / "dl").glob("*.tar.gz"))

    # An interrupted download resumes from its .part file (an HTTP Range request).
    server.cut_after = len(data) // 2
    with pytest.raises(DownloadError, match="rerun to resume"):
        load_clipset(UrbanSound8KDatasetConfig(**cfg, archive_md5=hashlib.md5(data).hexdigest()), RATE, progress=False)
    server.cut_after = None
    clips = load_clipset(UrbanSound8KDatasetConfig(**cfg, archive_md5=hashlib.md5(data).hexdigest()), RATE,
                         progress=True)
    assert server.requests[-1] == ("/UrbanSound8K.tar.gz?download=1", f"bytes={len(data) // 2}-")
    assert clips.class_names == ["dog_bark", "siren"] and len(clips) == 20
    requests = len(server.requests)
    load_clipset(UrbanSound8KDatasetConfig(**cfg, archive_md5=hashlib.md5(data).hexdigest()), RATE, progress=False)
    assert len(server.requests) == requests  # extracted once; the next run reads the copy


def test_fsdkaggle2018_holdout_verified_labels_and_weights(tmp_path):
    root = make_fsdkaggle2018(tmp_path / "fsd", ["Bark", "Cello", "Hi-hat"])
    kw = dict(root=str(root), cache_dir=str(tmp_path / "cache"))
    clips = load_clipset(FSDKaggle2018DatasetConfig(**kw), RATE, progress=False)
    assert clips.protocol == "holdout" and clips.num_folds == 1
    assert clips.class_names == ["Bark", "Cello", "Hi-hat"]
    test = clips.folds == 1
    assert int(test.sum()) == 6 and int((clips.folds == 0).sum()) == 12
    assert all(c.startswith("test/") for c, t in zip(clips.clip_ids, test.tolist()) if t)
    assert clips.weights is None  # unverified_weight 1: no weights at all
    # Whole clips: each clip's length is its file's, resampled.
    lengths = clips.ragged.lengths.tolist()
    for clip_id, n in zip(clips.clip_ids, lengths):
        split, stem = clip_id.split("/")
        info = sf.info(root / f"FSDKaggle2018.audio_{split}" / f"{stem}.wav")
        assert n == round(info.frames * RATE / info.samplerate)
    assert min(lengths) == round(0.3 * RATE)

    verified = load_clipset(FSDKaggle2018DatasetConfig(**kw, manually_verified_only=True), RATE, progress=False)
    assert int((verified.folds == 0).sum()) == 6 and int((verified.folds == 1).sum()) == 6
    weighted = load_clipset(FSDKaggle2018DatasetConfig(**kw, unverified_weight=0.5), RATE, progress=False)
    assert sorted(set(weighted.weights[weighted.folds == 0].tolist())) == [0.5, 1.0]
    assert weighted.weights[weighted.folds == 1].eq(1).all()  # test labels are all verified
    assert len({clips.fingerprint, verified.fingerprint, weighted.fingerprint}) == 3


def test_fsdkaggle2018_refuses_cv_and_names_a_wrong_root(tmp_path):
    root = make_fsdkaggle2018(tmp_path / "fsd", ["Bark", "Cello"])
    with pytest.raises(DataError, match="no folds; use dataset.protocol=holdout"):
        load_clipset(FSDKaggle2018DatasetConfig(root=str(root), protocol="cv"), RATE, progress=False)
    with pytest.raises(DataError, match="has no FSDKaggle2018.meta/train_post_competition.csv"):
        load_clipset(FSDKaggle2018DatasetConfig(root=str(tmp_path)), RATE, progress=False)


def test_folder_csv_with_split_column_is_a_holdout(tmp_path):
    root = tmp_path / "clips"
    root.mkdir()
    rows = ["filename,label,split"]
    for i in range(12):
        sf.write(root / f"{i}.wav", np.full(RATE, 0.1 * (1 + i % 2), dtype=np.float32), RATE)
        rows.append(f"{i}.wav,{'ab'[i % 2]},{'test' if i >= 8 else 'train'}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    cfg = FolderDatasetConfig(root=str(root), csv="meta.csv", protocol="holdout", clip_seconds=1.0,
                              cache_dir=str(tmp_path / "cache"))
    clips = load_clipset(cfg, RATE, progress=False)
    assert clips.folds.tolist() == [0] * 8 + [1] * 4 and clips.num_folds == 1
    (root / "meta.csv").write_text("\n".join(rows[:1] + [r.replace("test", "dev") for r in rows[1:]]) + "\n")
    with pytest.raises(DataError, match=r"split value\(s\) 'dev' are neither train nor test"):
        load_clipset(cfg, RATE, progress=False)
    (root / "meta.csv").write_text("filename,label\n0.wav,a\n1.wav,b\n")
    with pytest.raises(DataError, match="has no split column"):
        load_clipset(cfg, RATE, progress=False)


# --------------------------------------------------------------------------
# Ragged waveforms: the crops and windows everything variable-length is built from


def ragged_of(lengths: list[int]) -> RaggedWaveforms:
    lengths_t = torch.tensor(lengths)
    offsets = torch.cumsum(lengths_t, 0) - lengths_t
    # Sample value = 1 + position in its clip (mod 30000): any misplaced gather shows.
    samples = torch.cat([(torch.arange(n) % 30000 + 1).to(torch.int16) for n in lengths])
    return RaggedWaveforms(samples, offsets, lengths_t)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=8), st.integers(1, 1200))
def test_evaluation_windows_are_predicts_windows(lengths, window):
    ragged = ragged_of(lengths)
    clips = torch.arange(len(lengths))
    owner, starts, weight = ragged.evaluation_windows(clips, window)
    for c, n in enumerate(lengths):
        mine = starts[owner == c]
        assert len(mine) == audio.num_windows(n, window)  # the count predict's iter_windows yields
        assert mine.tolist() == [k * window for k in range(len(mine))]
        # Weights: the share of real audio per window, as Bundle.predict_windows weighs them.
        assert math.isclose(float(weight[owner == c].sum()), n / window, rel_tol=1e-5)
    x = ragged.windows(clips[owner], starts, window)
    position = starts[:, None] + torch.arange(window)
    expected = torch.where(position < torch.tensor(lengths)[owner][:, None], (position % 30000 + 1).float(), 0.0)
    assert torch.equal(x * 32767.0, expected.mul(1.0)) or torch.allclose(x * 32767.0, expected, atol=1e-2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=8), st.integers(1, 1200), st.integers(0, 2**31 - 1))
def test_random_crops_hold_the_whole_window_or_the_whole_short_clip(lengths, window, seed):
    torch.manual_seed(seed)
    ragged = ragged_of(lengths)
    x = (ragged.random_crops(torch.arange(len(lengths)), window) * 32767.0).round()
    for row, n in zip(x, lengths):
        real = row[row != 0]
        assert len(real) == min(n, window)  # no clip sample lost inside the window, no padding for long clips
        assert torch.all(real[1:] - real[:-1] == 1) or n > 30000  # one contiguous stretch of the clip


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=8), st.integers(1, 1200), st.integers(0, 2**31 - 1))
def test_repeated_short_clips_fill_the_window_with_the_clip_end_to_end(lengths, window, seed):
    """dataset.short_clips=repeat: a short clip's crop is the clip repeated from a random sample of it;
    a long clip's crop is as with padding; evaluation gives a short clip one all-audio window."""
    torch.manual_seed(seed)
    ragged = ragged_of(lengths)
    clips = torch.arange(len(lengths))
    x = (ragged.random_crops(clips, window, repeat_short=True) * 32767.0).round()
    for row, n in zip(x, lengths):
        if n >= window:
            assert torch.all(row != 0) and torch.all(row[1:] - row[:-1] == 1)  # one stretch, no padding
            continue
        phase = int(row[0]) - 1
        assert 0 <= phase < n
        expected = (phase + torch.arange(window)) % n + 1  # sample value = 1 + position in the clip
        assert torch.equal(row, expected.float())
    owner, starts, weight = ragged.evaluation_windows(clips, window, repeat_short=True)
    _, _, padded_weight = ragged.evaluation_windows(clips, window)
    short = torch.tensor(lengths)[owner] < window
    assert torch.all(weight[short] == 1) and torch.equal(weight[~short], padded_weight[~short])
    first = (ragged.windows(clips, torch.zeros_like(clips), window, repeat_short=True) * 32767.0).round()
    for row, n in zip(first, lengths):  # evaluation's window = predict's Bundle.fill_short of the clip
        from esc_sweep.bundle.predictor import repeat_to
        clip = torch.arange(n) % 30000 + 1
        assert torch.equal(row, repeat_to(clip[None].float(), window)[0] if n < window else clip[:window].float())


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 9), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_map_at_3_is_the_challenges_definition(classes, n, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, classes, generator=g)
    targets = torch.randint(0, classes, (n,), generator=g)
    expected = 0.0
    for s, t in zip(scores, targets):
        ranking = sorted(range(classes), key=lambda c: -float(s[c]))[:3]
        expected += 1.0 / (ranking.index(int(t)) + 1) if int(t) in ranking else 0.0
    assert math.isclose(map_at_k(scores, targets, 3), expected / n, rel_tol=1e-9)


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([8000, 16000, 22050, 44100, 48000]), st.floats(0.01, 1.5)),
                min_size=1, max_size=4))
def test_ragged_decoding_sizes_the_buffer_from_headers_and_holds_each_whole_clip(tmp_path_factory, files):
    """decode_ragged writes each clip into a slice sized from its header: equal, sample for sample (int16),
    to decoding the file whole, at any source rate."""
    folder = tmp_path_factory.mktemp("ragged")
    paths = []
    for i, (rate, seconds) in enumerate(files):
        path = folder / f"{i}.wav"
        sf.write(path, (0.4 * np.sin(np.arange(max(1, int(rate * seconds))) / 7.0)).astype(np.float32), rate)
        paths.append(path)
    ragged = decode_ragged(paths, 16000, progress=False, num_workers=2)
    for i, path in enumerate(paths):
        whole = decode_whole(path, 16000)
        assert int(ragged.lengths[i]) == whole.numel()
        got = ragged.samples[int(ragged.offsets[i]): int(ragged.offsets[i]) + whole.numel()]
        assert torch.equal(got, (whole.clamp(-1, 1) * 32767.0).round().to(torch.int16))
