"""Augmentations act batched and do what they say."""

from __future__ import annotations

import torch

from esc_sweep.features.augment import Augment, Masking, Mixup, RandomCrop, RandomGain, RandomTimeShift
from tests.conftest import compose_config


def test_frequency_mask_sets_whole_rows_to_the_clip_mean():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 32, 50) + 5
    out = Masking(-2, count=1, max_width=10)(x)
    changed_rows = (out != x).any(dim=-1)  # [B, 1, F]
    assert changed_rows.any()
    for b in range(8):
        rows = changed_rows[b, 0].nonzero().flatten()
        if len(rows):
            # a contiguous band of at most 10 rows, filled with the clip's mean
            assert rows.max() - rows.min() + 1 == len(rows) <= 10
            assert torch.allclose(out[b, 0, rows], x[b].mean().expand(len(rows), 50))


def test_time_mask_masks_columns_only():
    torch.manual_seed(1)
    x = torch.randn(4, 1, 16, 100)
    out = Masking(-1, count=2, max_width=20)(x)
    changed = out != x
    # a masked column is masked in every frequency row
    cols = changed.any(dim=2)
    assert torch.equal(changed.all(dim=2), cols)
    assert cols.sum(-1).max() <= 40


def test_time_shift_is_a_circular_roll_per_clip():
    torch.manual_seed(2)
    x = torch.arange(20.0).view(1, 1, 1, 20).repeat(6, 1, 3, 1)
    out = RandomTimeShift(0.5)(x)
    for b in range(6):
        shift = int((out[b, 0, 0, 0] - x[b, 0, 0, 0]) % 20)
        assert torch.equal(out[b], torch.roll(x[b], -shift, dims=-1))


def test_gain_adds_a_constant_per_clip_within_bounds():
    x = torch.zeros(100, 1, 4, 5)
    out = RandomGain(6.0)(x)
    per_clip = out.view(100, -1)
    assert torch.allclose(per_clip, per_clip[:, :1].expand_as(per_clip))
    assert per_clip.abs().max() <= 6.0 and per_clip.std() > 1.0


def test_mixup_keeps_target_mass_and_mixes_inputs_consistently():
    torch.manual_seed(3)
    x = torch.randn(16, 1, 4, 4)
    y = torch.eye(4)[torch.randint(0, 4, (16,))]
    mixed_x, mixed_y = Mixup(alpha=0.4)(x, y)
    assert torch.allclose(mixed_y.sum(1), torch.ones(16))
    assert (mixed_y.max(1).values >= 0.5 - 1e-6).all()  # each clip keeps the larger share
    assert not torch.equal(mixed_x, x)


def test_augmentation_none_is_identity_and_default_changes_input():
    x = torch.randn(8, 1, 64, 101)
    y = torch.eye(5)[torch.randint(0, 5, (8,))]
    none = Augment(compose_config(["augmentation=none"]).augmentation)
    out_x, out_y = none(x, y)
    assert torch.equal(out_x, x) and torch.equal(out_y, y)
    default = Augment(compose_config(["augmentation=default"]).augmentation)
    out_x, _ = default(x, y)
    assert out_x.shape == x.shape and not torch.equal(out_x, x)


def test_random_crop_takes_a_contiguous_window_at_a_random_start_per_clip():
    torch.manual_seed(4)
    x = torch.arange(100.0).view(1, 1, 1, 100).repeat(32, 1, 3, 1)
    out = RandomCrop(30)(x)
    assert out.shape == (32, 1, 3, 30)
    starts = out[:, 0, 0, 0].long()
    for b in range(32):
        assert torch.equal(out[b], x[b, :, :, starts[b] : starts[b] + 30])
    assert starts.min() >= 0 and starts.max() <= 70
    assert len(set(starts.tolist())) > 10  # not one start for the whole batch
    assert RandomCrop(200)(x) is x  # longer than the clip: unchanged


def test_crop_seconds_are_converted_to_frames_and_run_first():
    cfg = compose_config(["augmentation=default", "augmentation.crop_seconds=2.5"]).augmentation
    augment = Augment(cfg, frames_per_second=50.0)
    assert isinstance(augment.steps[0], RandomCrop) and augment.steps[0].frames == 125
    x, y = augment(torch.randn(8, 1, 64, 251), torch.eye(4)[torch.randint(0, 4, (8,))])
    assert x.shape == (8, 1, 64, 125) and y.shape == (8, 4)


def test_band_limit_silences_a_top_band_with_a_taper_in_some_clips_only():
    from esc_sweep.features.augment import RandomBandLimit

    torch.manual_seed(0)
    x = 10 * torch.randn(256, 1, 64, 20)  # decibel-like: a 100 dB range
    y = RandomBandLimit(prob=0.5, max_fraction=0.4, floor_db=80.0)(x)
    changed = (y != x).flatten(1).any(1)
    assert 0.3 < changed.float().mean() < 0.7  # about half the clips
    taper = int(RandomBandLimit.TAPER_FRACTION * 64)  # 6 bands
    for clip_x, clip_y in zip(x[changed], y[changed]):
        floor = clip_x.max() - 80
        assert torch.all(clip_y <= clip_x) and torch.all(clip_y >= torch.minimum(clip_x, floor))  # only lowered
        touched = (clip_y != clip_x).any(-1).flatten()
        first = int(touched.nonzero()[0])
        assert not touched[:first].any() and first >= 64 - int(0.4 * 64) - taper - 1  # only a top band
        at_floor = (clip_y[0] == torch.minimum(clip_x[0], floor)).all(-1)
        silent = int(at_floor.nonzero()[0]) if at_floor.any() else 64  # a cutoff within the top band: fade only
        assert at_floor[silent:].all()  # silence from the cutoff up ...
        assert 0 < silent - first <= taper + 1  # ... reached through a fade of about TAPER_FRACTION of the axis
        assert silent >= 64 - int(0.4 * 64) - taper  # (a bin deep in the fade can already sit at the floor)
    assert torch.equal(RandomBandLimit(prob=0.0, max_fraction=0.4)(x), x)


def test_band_limit_at_a_given_cutoff_silences_exactly_the_bins_above_it():
    from esc_sweep.features.augment import RandomBandLimit

    torch.manual_seed(3)
    x = 40 + 10 * torch.randn(5, 1, 64, 12)  # nothing near the floor
    removed = torch.tensor([0.0, 4.0, 10.0, 16.0, 25.0])
    y = RandomBandLimit(prob=1.0, max_fraction=0.4, floor_db=80.0).limit(x, removed)
    taper = RandomBandLimit.TAPER_FRACTION * 64
    for clip_x, clip_y, k in zip(x, y, removed.tolist()):
        floor = clip_x.max() - 80
        cutoff = 64 - k
        assert torch.equal(clip_y[0, : int(cutoff - taper) + 1], clip_x[0, : int(cutoff - taper) + 1])  # below: as is
        assert torch.allclose(clip_y[0, int(cutoff):], floor.expand_as(clip_y[0, int(cutoff):]))  # above: silence
