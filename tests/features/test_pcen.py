"""PCEN (features.kind=pcen): the paper's equations, librosa.pcen's numbers, learnt parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from esc_sweep.features.frontends import build_model_front_end
from esc_sweep.features.pcen import PCEN, smooth, smoothing_coefficient
from tests.conftest import compose_config


def reference_pcen(energy: np.ndarray, s: float, alpha=0.98, delta=2.0, r=0.5, eps=1e-6) -> np.ndarray:
    """Wang et al. 2017, eq. (1)-(2), frame by frame, with the smoother starting at M(-1) = E(0)."""
    smoothed = np.empty_like(energy)
    previous = energy[:, 0]
    for t in range(energy.shape[1]):
        previous = (1 - s) * previous + s * energy[:, t]
        smoothed[:, t] = previous
    return (energy / (eps + smoothed) ** alpha + delta) ** r - delta**r


energies = st.builds(
    lambda seed, channels, frames, level, burst: _energies(seed, channels, frames, level, burst),
    st.integers(0, 2**31 - 1), st.integers(1, 8), st.integers(1, 300), st.floats(-6, 6), st.floats(0, 8),
)


def _energies(seed: int, channels: int, frames: int, level: float, burst: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    energy = rng.exponential(1.0, (channels, frames)) * 10.0**level
    energy[:, frames // 2: frames // 2 + 5] *= 10.0**burst  # a loud event: quiet frames after it must stay exact
    return energy


@settings(max_examples=40, deadline=None)
@given(energies, st.floats(0.2, 1.5))
def test_pcen_follows_the_paper_equations(energy, time_constant):
    s = smoothing_coefficient(time_constant, 100.0)
    expected = reference_pcen(energy, s)
    got = PCEN(energy.shape[0], s=s)(torch.tensor(energy, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)


@settings(max_examples=25, deadline=None)
@given(energies)
def test_pcen_matches_librosa_started_in_the_same_state(energy):
    librosa = pytest.importorskip("librosa")
    scipy_signal = pytest.importorskip("scipy.signal")
    s = smoothing_coefficient(0.4, 16000 / 160)
    # librosa starts the smoother at the steady state of a unit input; ours at the clip's first frame.
    zi = scipy_signal.lfilter_zi([s], [1, s - 1])[None, :] * energy[:, :1]
    expected = librosa.pcen(energy, sr=16000, hop_length=160, zi=zi)  # its defaults: 0.98, 2, 0.5, 0.4 s, 1e-6
    got = PCEN(energy.shape[0], s=s)(torch.tensor(energy, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)


def test_smoothing_coefficient_is_librosas():
    # librosa: T = 0.4 s * 22050 / 512 frames, b = (sqrt(1 + 4 T^2) - 1) / (2 T^2)
    t = 0.4 * 22050 / 512
    assert smoothing_coefficient(0.4, 22050 / 512) == pytest.approx((math.sqrt(1 + 4 * t * t) - 1) / (2 * t * t))
    assert 0.02 < smoothing_coefficient(0.4, 100.0) < 0.03


def test_smoother_of_a_constant_is_that_constant():
    energy = torch.full((3, 50), 7.0)
    assert torch.allclose(smooth(energy, torch.full((3,), 0.3)), energy)


def test_pcen_is_nearly_level_invariant_where_the_log_is_not():
    """The point of PCEN: 40 dB quieter, E / M^alpha changes by (10^4)^0.02 = 1.2 only, so the output moves
    by < 20 %, where a decibel spectrogram of values within 10 dB of each other moves by 40 dB."""
    torch.manual_seed(0)
    energy = torch.rand(16, 200) * 10 + 0.1
    pcen = PCEN(16, s=0.025)
    loud, quiet = pcen(energy * 1e2), pcen(energy * 1e-2)
    assert ((loud - quiet).abs() / loud.abs()).max() < 0.2
    log_loud, log_quiet = (10 * torch.log10(e) for e in (energy * 1e2, energy * 1e-2))
    assert ((log_loud - log_quiet).abs() / log_loud.abs()).min() > 1


def test_fixed_pcen_has_no_parameters_and_trainable_learns_alpha_delta_r_in_log_space():
    fixed = build_model_front_end(compose_config(["features=pcen"]).features)
    assert not list(fixed.parameters())
    assert {"pcen.log_alpha", "pcen.log_delta", "pcen.log_r", "pcen.logit_s"} <= set(fixed.state_dict())
    trainable = build_model_front_end(compose_config(["features=pcen", "features.pcen_trainable=true"]).features)
    names = {n for n, _ in trainable.named_parameters()}
    assert names == {"pcen.log_alpha", "pcen.log_delta", "pcen.log_r"}
    assert torch.allclose(trainable.pcen.log_alpha.exp(), torch.tensor(0.98))
    decibels = torch.randn(2, 1, 64, 40) * 10 - 30
    trainable(decibels).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.parameters())


def test_pcen_front_end_reads_the_decibels_the_store_keeps():
    cfg = compose_config(["features=pcen"]).features
    front_end = build_model_front_end(cfg)
    energy = torch.rand(2, 1, 64, 30) + 1e-3
    expected = front_end.pcen(energy)
    assert torch.allclose(front_end(10 * torch.log10(energy)), expected, rtol=1e-4, atol=1e-5)
