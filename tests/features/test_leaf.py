"""LEAF (features.kind=leaf): mel-initialised Gabor filters, learnt pooling and PCEN, all trainable."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio
from hypothesis import given, settings, strategies as st

from esc_sweep.features.frontends import build_model_front_end, model_input_bins
from esc_sweep.features.leaf import GaborFilterbank, Leaf, gabor_init_from_mel
from tests.conftest import compose_config


def test_gabor_filters_start_at_the_mel_centre_frequencies():
    eta, sigma = gabor_init_from_mel(40, 16000, 60.0, 7800.0)
    centres_hz = eta * 16000 / (2 * math.pi)
    mel = torchaudio.functional.melscale_fbanks(257, 60.0, 7800.0, 40, 16000).T
    peaks_hz = mel.argmax(1).float() * 16000 / 512
    assert torch.allclose(centres_hz, peaks_hz)
    assert torch.all(centres_hz[1:] >= centres_hz[:-1])  # ordered low to high, as the mel bank
    assert sigma[0] > sigma[-1]  # narrow low bands are long in time


def test_a_filters_response_peaks_at_its_centre_frequency():
    bank = GaborFilterbank(8, 401, 16000, 60.0, 7800.0)
    real, imaginary = bank.impulse_responses()
    response = torch.fft.fft(torch.complex(real, imaginary), n=4096).abs()[:, :2049]
    peak_hz = response.argmax(1).float() * 16000 / 4096
    expected_hz = bank.eta.detach() * 16000 / (2 * math.pi)
    assert torch.allclose(peak_hz, expected_hz, atol=16000 / 4096 + 1)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(500, 3000))
def test_fft_filtering_equals_a_direct_convolution(seed, samples):
    bank = GaborFilterbank(6, 101, 16000, 60.0, 7800.0)
    x = torch.randn(2, 1, samples, generator=torch.Generator().manual_seed(seed))
    real, imaginary = bank.impulse_responses()
    kernels = torch.cat([real, imaginary]).flip(-1).unsqueeze(1)  # conv1d correlates: flip for a convolution
    direct = F.conv1d(x, kernels, padding=50)
    expected = direct[:, :6] ** 2 + direct[:, 6:] ** 2
    assert torch.allclose(bank(x), expected, atol=1e-5, rtol=1e-4)


def test_leaf_learns_every_part_and_gives_n_filters_by_frames():
    cfg = compose_config(["features=leaf"]).features
    leaf = build_model_front_end(cfg)
    assert isinstance(leaf, Leaf) and model_input_bins(cfg, 1) == 40
    out = leaf(0.1 * torch.randn(2, 1, 1, 16000))
    assert out.shape == (2, 1, 40, 100)
    out.sum().backward()
    learnt = {name for name, p in leaf.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert learnt == {"filters.eta", "filters.sigma", "pooling.width", "compression.log_alpha",
                      "compression.log_delta", "compression.log_r", "compression.logit_s"}


def test_chunked_checkpointed_filtering_gives_the_same_outputs_and_gradients(monkeypatch):
    """Memory: clips are filtered CLIPS_PER_PASS at a time and recomputed in the backward pass; no change in numbers."""
    torch.manual_seed(0)
    x = 0.1 * torch.randn(5, 1, 1, 3000)

    def run(chunk: int):
        monkeypatch.setattr("esc_sweep.features.leaf.CLIPS_PER_PASS", chunk)
        torch.manual_seed(1)
        leaf = Leaf(8, 16000, 101, 160, 60.0, 7800.0)
        out = leaf(x)
        out.pow(2).sum().backward()
        return out.detach(), [p.grad.clone() for p in leaf.parameters()]

    whole, whole_grads = run(64)
    chunked, chunked_grads = run(2)
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(whole_grads, chunked_grads))
