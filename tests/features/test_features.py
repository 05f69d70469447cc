"""Feature extraction shapes and values."""

from __future__ import annotations

import math

import pytest
import torch

from esc_sweep.features.transforms import build_features, compute_features, feature_shape
from tests.conftest import compose_config


def _features_cfg(*overrides):
    return compose_config([*overrides]).features


@pytest.mark.parametrize("kind", ["mel", "mfcc", "stft"])
def test_shapes_match_feature_shape(kind):
    cfg = _features_cfg(f"features={kind}")
    waves = torch.randn(3, 16000)
    out = build_features(cfg)(waves)
    bins, frames = feature_shape(cfg, 16000)
    assert out.shape == (3, 1, bins, frames)
    assert torch.isfinite(out).all()


def test_pure_tone_peaks_in_the_right_mel_bin():
    cfg = _features_cfg("features=mel")
    sr, freq = cfg.sample_rate, 2000.0
    t = torch.arange(sr) / sr
    tone = torch.sin(2 * math.pi * freq * t).unsqueeze(0)
    mel = build_features(cfg)(tone)[0, 0].mean(-1)  # [n_mels]
    peak_bin = int(mel.argmax())
    # Centre frequencies of the mel filterbank (HTK mel scale, torchaudio's default).
    def hz_to_mel(f):
        return 2595 * math.log10(1 + f / 700)

    def mel_to_hz(m):
        return 700 * (10 ** (m / 2595) - 1)

    edges = torch.linspace(hz_to_mel(0), hz_to_mel(sr / 2), cfg.n_mels + 2)
    centres = [mel_to_hz(float(m)) for m in edges[1:-1]]
    expected = min(range(cfg.n_mels), key=lambda i: abs(centres[i] - freq))
    assert abs(peak_bin - expected) <= 1


def test_top_db_is_applied_per_clip_not_per_batch():
    cfg = _features_cfg("features=mel")
    loud = torch.randn(1, 16000)
    quiet = loud * 1e-4
    batch = build_features(cfg)(torch.cat([loud, quiet]))
    alone = build_features(cfg)(quiet)
    assert torch.allclose(batch[1], alone[0], atol=1e-3)


def test_compute_features_batches_equal_single_pass():
    cfg = _features_cfg("features=mel")
    extractor = build_features(cfg)
    waves = torch.randn(10, 8000)
    chunked = compute_features(extractor, waves, torch.device("cpu"), batch_size=3)
    assert torch.allclose(chunked, extractor(waves), atol=1e-4)
