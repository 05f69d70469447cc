"""Computed spectrograms are reused across CPU runs, exactly, and never stale."""

from __future__ import annotations

import os
import time

import torch

from esc_sweep.features import cache as feature_cache
from esc_sweep.features.cache import cache_key, cached_features
from esc_sweep.data.synthetic import load_synthetic
from esc_sweep.features.store import Spectrograms
from tests.conftest import FAST_SYNTHETIC, compose_config


def _counting(values: torch.Tensor):
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return values.clone()

    return compute, calls


def test_second_request_reads_the_same_values_without_computing(tmp_path):
    values = torch.randn(5, 1, 8, 11)
    compute, calls = _counting(values)
    first = cached_features(tmp_path, "k1", compute)
    second = cached_features(tmp_path, "k1", compute)
    assert len(calls) == 1 and torch.equal(first, values) and torch.equal(second, values)
    assert second.dtype == torch.float32


def test_key_changes_with_the_audio_and_with_the_features_config():
    waves = torch.randn(4, 16000)
    base = cache_key("fp", waves, {"n_mels": 64})
    edited = waves.clone()
    edited[2] *= 0.5  # one clip's audio changed, same clip ids and sizes
    assert cache_key("fp", edited, {"n_mels": 64}) != base
    assert cache_key("fp", waves, {"n_mels": 32}) != base
    assert cache_key("other", waves, {"n_mels": 64}) != base
    assert cache_key("fp", waves.clone(), {"n_mels": 64}) == base


def test_only_the_most_recently_used_files_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_cache, "MAX_FILES", 2)
    for i, key in enumerate(["a", "b", "c"]):
        cached_features(tmp_path, key, lambda: torch.zeros(2, 1, 2, 2))
        os.utime(tmp_path / f"features-{key}.pt", (time.time() - 100 + i, time.time() - 100 + i))  # older than the next write
    assert sorted(p.name for p in tmp_path.glob("features-*.pt")) == ["features-b.pt", "features-c.pt"]


def test_the_cache_stays_under_its_byte_budget_but_keeps_the_newest(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_cache, "MAX_BYTES", 6000)  # room for one 4000-byte set, not two
    for i, key in enumerate(["a", "b"]):
        cached_features(tmp_path, key, lambda: torch.zeros(1000))
        os.utime(tmp_path / f"features-{key}.pt", (time.time() - 100 + i, time.time() - 100 + i))  # older than the next write
    assert [p.name for p in tmp_path.glob("features-*.pt")] == ["features-b.pt"]
    monkeypatch.setattr(feature_cache, "MAX_BYTES", 10)  # smaller than any set: the newest still stays
    cached_features(tmp_path, "c", lambda: torch.zeros(1000))
    assert [p.name for p in tmp_path.glob("features-*.pt")] == ["features-c.pt"]


def test_a_damaged_file_is_recomputed(tmp_path):
    (tmp_path / "features-k.pt").write_bytes(b"not a tensor")
    values = torch.ones(3, 1, 4, 4)
    compute, calls = _counting(values)
    assert torch.equal(cached_features(tmp_path, "k", compute), values) and calls == [1]
    assert torch.equal(cached_features(tmp_path, "k", compute), values) and calls == [1]  # rewritten


def test_cpu_runs_share_spectrograms_through_the_cache(tmp_path):
    cfg = compose_config(FAST_SYNTHETIC + [f"dataset.cache_dir={tmp_path}"])
    clips = load_synthetic(cfg.dataset, cfg.features.sample_rate)
    first = Spectrograms(cfg, clips, torch.device("cpu"))
    assert len(list((tmp_path / "features").glob("features-*.pt"))) == 1
    second = Spectrograms(cfg, clips, torch.device("cpu"))
    assert torch.equal(first.data, second.data)
    cfg.features.cache = False
    assert torch.equal(Spectrograms(cfg, clips, torch.device("cpu")).data, first.data)
