"""Feature extraction shapes and values."""

from __future__ import annotations

import math

import pytest
import torch

from esc_sweep.features.transforms import build_features, compute_features, feature_shape
from tests.conftest import compose_config


def _features_cfg(*overrides):
    return compose_config([*overrides]).features


@pytest.mark.parametrize("kind", ["mel", "mfcc", "stft", "fbank"])
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


def test_fbank_is_kaldi_fbank_per_clip():
    """features=fbank is torchaudio's Kaldi fbank with AST's settings, clip by clip (no batch interaction)."""
    import torchaudio.compliance.kaldi as kaldi

    cfg = _features_cfg("features=fbank")
    noise = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    waves = noise * torch.tensor([[1.0], [1e-2], [0.1]])  # one noise at three levels
    out = build_features(cfg)(waves)
    assert out.shape == (3, 1, 128, 98)  # 1 + (16000 - 400) // 160: whole 25 ms windows only
    for i in range(3):
        expected = kaldi.fbank(waves[i : i + 1], sample_frequency=16000, window_type="hanning", num_mel_bins=128,
                               dither=0.0).T
        assert torch.allclose(out[i, 0], expected, atol=1e-6)
    # Natural-log energies: 100x quieter is 2 ln(100) = 9.2 lower (power, not dB), except near Kaldi's floor
    # ln(float32 eps) = -15.94, where the few low bands too narrow to hold an FFT bin sit.
    floor = math.log(torch.finfo(torch.float32).eps)
    filled = out[1, 0] > floor + 1
    assert 0.95 < filled.float().mean() < 1 and out[1, 0].min() == pytest.approx(floor, abs=1e-4)
    assert torch.allclose((out[0, 0] - out[1, 0])[filled], torch.tensor(2 * math.log(100)), atol=1e-3)


def test_fbank_window_follows_win_length():
    cfg = _features_cfg("features=fbank", "features.win_length=1024", "features.n_fft=1024",
                        "features.sample_rate=32000", "features.hop_length=320")
    out = build_features(cfg)(torch.randn(1, 32000))
    assert out.shape[-1] == 1 + (32000 - 1024) // 320 == feature_shape(cfg, 32000)[1]

