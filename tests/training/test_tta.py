"""Test-time crops: where they are cut, how they are averaged, and how the CV reports them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from esc_sweep.training.results import CVResult, FoldResult
from esc_sweep.training.tta import (
    DEFAULT_CROP_FRACTION,
    averaged_log_probabilities,
    crop_length,
    crop_starts,
    crop_views,
    evaluate_tta,
)
from tests.conftest import FAST_SYNTHETIC, compose_config


def test_crops_are_evenly_spaced_and_flush_with_both_ends():
    assert crop_starts(100, 80, 5).tolist() == [0, 5, 10, 15, 20]
    assert crop_starts(501, 150, 10).tolist()[0] == 0 and crop_starts(501, 150, 10).tolist()[-1] == 351
    assert crop_starts(50, 50, 4).tolist() == [0, 0, 0, 0]  # a crop as long as the clip: the clip itself


def test_crop_length_follows_training_crops_else_a_fixed_fraction():
    assert crop_length(501, crop_seconds=1.5, frames_per_second=100.0) == 150
    assert crop_length(501, crop_seconds=0.0, frames_per_second=100.0) == round(DEFAULT_CROP_FRACTION * 501)
    assert crop_length(51, crop_seconds=9.0, frames_per_second=100.0) == 51  # never longer than the clip


def test_crop_views_are_the_windows_of_each_clip_in_order():
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 1, 3, 10)
    views = crop_views(x, frames=4, crops=3)  # starts 0, 3, 6
    assert views.shape == (6, 1, 3, 4)
    for clip in range(2):
        for k, start in enumerate([0, 3, 6]):
            assert torch.equal(views[clip * 3 + k], x[clip, :, :, start:start + 4])


class MeanLevel(nn.Module):
    """Two-class 'model': class 0's logit is the crop's mean value, class 1's is 0."""

    def forward(self, x):
        level = x.mean(dim=(1, 2, 3))
        return torch.stack([level, torch.zeros_like(level)], dim=1)


def test_probabilities_of_the_crops_are_averaged_not_their_logits():
    # One loud early event: the first crop is sure of class 0, the other four mildly prefer class 1.
    x = torch.full((1, 1, 1, 20), -1.0)
    x[..., :2] = 40.0
    crops, frames = 5, 4  # starts 0, 4, 8, 12, 16
    out = averaged_log_probabilities(MeanLevel(), x, crops, frames)
    per_crop = torch.softmax(MeanLevel()(crop_views(x, frames, crops)), dim=1)
    assert torch.allclose(out.exp(), per_crop.mean(0, keepdim=True), atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(1))
    # Averaged logits would say class 0 (mean logit (19.5 - 4) / 5 > 0); averaged probabilities
    # ((1 + 4 * 0.27) / 5 < 0.5) say class 1.
    assert MeanLevel()(crop_views(x, frames, crops))[:, 0].mean() > 0
    assert int(out.argmax(1)) == 1


def _data(x, targets):
    return SimpleNamespace(spectrograms=x, targets=targets, num_classes=2)


def _cfg(crops, eval_batch_size=256, crop_seconds=0.0, channels_last=False):
    return SimpleNamespace(
        trainer=SimpleNamespace(tta_crops=crops, eval_batch_size=eval_batch_size, channels_last=channels_last,
                                amp=False),
        features=SimpleNamespace(sample_rate=1000, hop_length=100),  # 10 frames per second
        augmentation=SimpleNamespace(crop_seconds=crop_seconds),
    )


def test_evaluate_tta_scores_each_clip_by_its_averaged_crops():
    torch.manual_seed(0)
    x = torch.randn(12, 1, 4, 20)
    x[:6, ..., :5] += 3.0  # an early event in the first six clips
    targets = torch.tensor([0] * 6 + [1] * 6)
    cfg = _cfg(crops=4, crop_seconds=1.0)  # 10-frame crops at 0, 3, 7, 10
    expected = averaged_log_probabilities(MeanLevel(), x, 4, 10).argmax(1)
    result = evaluate_tta(MeanLevel(), _data(x, targets), torch.arange(12), cfg, torch.device("cpu"))
    assert result["acc"] == pytest.approx(float((expected == targets).float().mean()))
    assert int(result["confusion"].sum()) == 12
    # Batching (one clip per forward pass) and memory layout change nothing.
    small = evaluate_tta(MeanLevel(), _data(x, targets), torch.arange(12), _cfg(4, 4, 1.0, True), torch.device("cpu"))
    assert torch.equal(small["confusion"], result["confusion"])


def _cv(tmp_path, *extra):
    from esc_sweep.training.cv import cross_validate

    cfg = compose_config(FAST_SYNTHETIC + ["tracking.enabled=false", f"trainer.checkpoint_dir={tmp_path}/ck",
                                           "trainer.folds=[1,2]", *extra])
    return cross_validate(cfg)


def test_cv_reports_tta_accuracy_beside_single_view_accuracy(tmp_path):
    # Crops as long as the clip are the clip itself: the TTA score must equal the single-view score.
    whole = _cv(tmp_path / "whole", "trainer.tta_crops=3", "augmentation.crop_seconds=9")
    for fold in whole.folds:
        assert fold.val_acc_tta == pytest.approx(fold.val_acc)
        assert fold.history[-1]["val_acc_tta"] == fold.val_acc_tta
    summary = whole.summary()
    assert summary["cv_val_acc_tta_mean"] == pytest.approx(summary["cv_val_acc_mean"])
    assert "val_acc_tta" in whole.to_dict()["folds"][0]

    cropped = _cv(tmp_path / "cropped", "trainer.tta_crops=5")
    assert all(0.6 <= f.val_acc_tta <= 1.0 for f in cropped.folds)  # 5 classes: chance is 0.2

    off = _cv(tmp_path / "off", "trainer.epochs=1")
    assert all(f.val_acc_tta is None for f in off.folds)
    assert "cv_val_acc_tta_mean" not in off.summary()

    # The console table shows the TTA column only when there is one.
    from rich.console import Console

    from esc_sweep.app.report import results_table

    def header(cv):
        console = Console(record=True, width=200)
        console.print(results_table(cv))
        return console.export_text()

    assert "val acc TTA" in header(cropped) and "val acc TTA" not in header(off)


def test_fold_results_of_older_checkpoints_load_without_the_tta_field():
    fold = FoldResult(fold=1, val_acc=0.5, val_loss=1.0, val_f1=0.5, train_acc=0.9, train_loss=0.1, epochs=1,
                      seconds=1.0, confusion=[[1, 1], [0, 2]], history=[{"epoch": 1, "val_acc_tta": 0.75}])
    assert fold.val_acc_tta == 0.75  # taken from the last epoch's record
    old = fold.to_dict()
    del old["val_acc_tta"]
    old["history"] = [{"epoch": 1}]
    restored = FoldResult.from_dict(old)
    assert restored.val_acc_tta is None
    mixed = CVResult(folds=[fold, restored], class_names=["a", "b"])
    assert "cv_val_acc_tta_mean" not in mixed.summary()  # a mean over some folds only would mislead


def test_negative_crop_counts_and_band_floors_are_refused_naming_the_key():
    from esc_sweep.config import validate
    from esc_sweep.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer\.tta_crops=-1: must be >= 0"):
        validate(compose_config(["trainer.tta_crops=-1"]))
    with pytest.raises(ConfigError, match=r"augmentation\.band_limit_floor_db=-5.0: must be >= 0"):
        validate(compose_config(["augmentation.band_limit_floor_db=-5"]))
    validate(compose_config(["trainer.tta_crops=10", "trainer.save_fold_ensemble=false"]))
