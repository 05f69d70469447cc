"""Between-class learning: the paper's level-aware formula, its partners and labels, the KL loss."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from esc_sweep.features.augment import Augment
from esc_sweep.features.bc import (BCMix, a_weighting_db, clip_gain_db, different_class_partners, gain_n_fft,
                                   level_aware_mix, level_aware_ratio)
from esc_sweep.training.loop import kl_divergence, soft_cross_entropy
from tests.conftest import compose_config


def test_level_aware_ratio_by_hand():
    # r = 0.7, g1 = -10 dB, g2 = -20 dB: p = 1 / (1 + 10^(10/20) * 0.3 / 0.7) = 1 / (1 + 3.1623 * 0.42857) = 0.42459
    p = level_aware_ratio(torch.tensor([0.7]), torch.tensor([-10.0]), torch.tensor([-20.0]))
    assert p.item() == pytest.approx(1 / (1 + math.sqrt(10) * 0.3 / 0.7), rel=1e-6)
    assert p.item() == pytest.approx(0.42459, abs=1e-5)
    x1, x2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mixed = level_aware_mix(x1, x2, p)
    norm = math.sqrt(0.42459**2 + 0.57541**2)
    assert torch.allclose(mixed, torch.tensor([[0.42459 / norm, 0.57541 / norm]]), atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.001, 0.999), st.floats(-80, 0), st.floats(-80, 0))
def test_ratio_stays_in_the_unit_interval_and_equals_r_at_equal_gains(r, g1, g2):
    p = level_aware_ratio(torch.tensor([r], dtype=torch.float64), torch.tensor([g1], dtype=torch.float64),
                          torch.tensor([g2], dtype=torch.float64)).item()
    assert 0 <= p <= 1
    same = level_aware_ratio(torch.tensor([r], dtype=torch.float64), torch.tensor([g1], dtype=torch.float64),
                             torch.tensor([g1], dtype=torch.float64)).item()
    assert same == pytest.approx(r)
    # The louder clip gets the smaller coefficient: it needs less to be heard at its share.
    if g1 > g2 + 1e-6:
        assert p <= r + 1e-12


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-30, 30), st.floats(0.05, 0.95))
def test_scaling_one_clip_leaves_the_mixture_direction_unchanged(seed, db, r):
    """Level-aware mixing undoes a clip's level: mixing x1 with k x2 gives the same sound, up to its overall level."""
    generator = torch.Generator().manual_seed(seed)
    x1, x2 = (0.1 * torch.randn(1, 1, 1, 4096, generator=generator, dtype=torch.float64) for _ in range(2))
    k = 10 ** (db / 20)
    r = torch.tensor([r], dtype=torch.float64)

    def mix(a, b):
        p = level_aware_ratio(r, clip_gain_db(a, 16000).double(), clip_gain_db(b, 16000).double())
        return level_aware_mix(a, b, p).flatten()

    plain, scaled = mix(x1, x2), mix(x1, k * x2)
    cosine = torch.dot(plain, scaled) / (plain.norm() * scaled.norm())
    assert cosine.item() == pytest.approx(1.0, abs=1e-4)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-40, 20))
def test_gain_of_a_scaled_clip_moves_by_its_decibels(seed, db):
    x = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(seed))
    shift = clip_gain_db(x * 10 ** (db / 20), 16000) - clip_gain_db(x, 16000)
    assert torch.allclose(shift, torch.full((2,), db), atol=0.05)


def test_gain_frames_are_the_papers_and_a_weighting_is_0_db_at_1_khz():
    assert gain_n_fft(16000) == 2048 and gain_n_fft(44100) == 4096
    assert a_weighting_db(torch.tensor([1000.0])).item() == pytest.approx(0.0, abs=0.1)
    assert a_weighting_db(torch.tensor([100.0])).item() == pytest.approx(-19.1, abs=0.2)
    assert clip_gain_db(torch.zeros(1, 5000), 16000).item() == pytest.approx(-80.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=24), st.integers(0, 2**31 - 1))
def test_partners_are_of_another_class_whenever_the_batch_has_one(labels, seed):
    torch.manual_seed(seed)
    targets = torch.eye(5)[torch.tensor(labels)]
    partner = different_class_partners(targets)
    labels_t = torch.tensor(labels)
    for i, j in enumerate(partner.tolist()):
        if (labels_t != labels_t[i]).any():
            assert labels[j] != labels[i]
        else:
            assert j == i


@pytest.mark.parametrize("sample_rate", [None, 16000])
def test_bc_mix_targets_are_the_mixed_labels_and_sum_to_one(sample_rate):
    torch.manual_seed(0)
    x = torch.randn(16, 1, 1 if sample_rate else 8, 4000 if sample_rate else 20)
    targets = torch.eye(4)[torch.arange(16) % 4]
    mixed, soft = BCMix(sample_rate)(x, targets)
    assert mixed.shape == x.shape and torch.allclose(soft.sum(1), torch.ones(16))
    assert ((soft > 0).sum(1) == 2).all()  # two classes in every label (r is never exactly 0 or 1 here)
    # Each row's own class keeps the share r, which the spectrogram mix also uses for the inputs.
    if sample_rate is None:
        own = soft[torch.arange(16), torch.arange(16) % 4]
        partner_class = (soft - torch.eye(4)[torch.arange(16) % 4] * own[:, None]).argmax(1)
        assert torch.all(partner_class != torch.arange(16) % 4)


def test_bc_learning_replaces_mixup_and_takes_the_waveform_path_for_waveform_kinds():
    aug = compose_config(["augmentation=default", "augmentation.bc_learning=true"]).augmentation
    spectrogram = Augment(aug, 100.0)
    assert isinstance(spectrogram.mixup, BCMix) and spectrogram.mixup.sample_rate is None
    waveform = Augment(aug, 16000.0, domain="waveform", sample_rate=16000)
    assert waveform.mixup.sample_rate == 16000
    # Waveforms: no SpecAugment masks or band limiting, gain as a factor.
    assert [type(s).__name__ for s in waveform.steps] == ["RandomWaveformGain", "RandomTimeShift"]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 10))
def test_kl_divergence_is_cross_entropy_minus_the_targets_entropy(seed, classes):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, classes, generator=generator, dtype=torch.float64)
    targets = torch.softmax(torch.randn(6, classes, generator=generator, dtype=torch.float64) * 3, dim=1)
    targets[0] = torch.nn.functional.one_hot(torch.tensor(1), classes)  # zeros in a target: 0 log 0 = 0
    entropy = -(targets * targets.clamp_min(1e-300).log()).sum(1).mean()
    kl = kl_divergence(logits, targets, 0.0)
    assert kl.item() == pytest.approx((soft_cross_entropy(logits, targets, 0.0) - entropy).item(), rel=1e-5)
    assert kl.item() >= -1e-6
    # A model that outputs exactly the mixed label has zero loss.
    assert kl_divergence(targets[1:].log(), targets[1:], 0.0).item() == pytest.approx(0.0, abs=1e-6)
