"""The cross-validation trainer: learns, is deterministic, aggregates honestly, fails clearly."""

from __future__ import annotations

import pytest
import torch

from esc_sweep.errors import NonFiniteLossError
from esc_sweep.training.cv import cross_validate
from tests.conftest import FAST_SYNTHETIC, compose_config


def _cv(tmp_path, *extra):
    cfg = compose_config(
        FAST_SYNTHETIC + ["tracking.enabled=false", f"trainer.checkpoint_dir={tmp_path}/ck", *extra]
    )
    return cross_validate(cfg)


def test_synthetic_cv_learns_far_above_chance(tmp_path):
    cv = _cv(tmp_path)
    assert len(cv.folds) == 5
    # 5 classes: chance is 20 %.
    assert cv.mean_val_acc >= 0.8
    for fold in cv.folds:
        assert len(fold.history) == 8
        assert fold.gap == pytest.approx(fold.train_acc - fold.val_acc)
        assert sum(map(sum, fold.confusion)) == 10  # 50 clips / 5 folds
    assert sum(map(sum, cv.pooled_confusion)) == 50
    summary = cv.summary()
    assert summary["cv_val_acc_mean"] == pytest.approx(sum(f.val_acc for f in cv.folds) / 5)
    assert summary["pooled_val_acc"] == pytest.approx(summary["cv_val_acc_mean"])  # equal-size folds


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(tmp_path):
    first = _cv(tmp_path / "a", "trainer.folds=[1,2]", "augmentation=default")
    second = _cv(tmp_path / "b", "trainer.folds=[1,2]", "augmentation=default")
    other = _cv(tmp_path / "c", "trainer.folds=[1,2]", "augmentation=default", "trainer.seed=1")
    for a, b in zip(first.folds, second.folds):
        assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
        assert (a.val_acc, a.val_loss, a.train_acc) == (b.val_acc, b.val_loss, b.train_acc)
        assert a.confusion == b.confusion
    assert [h["train_loss"] for h in first.folds[0].history] != [h["train_loss"] for h in other.folds[0].history]


def test_only_requested_folds_run(tmp_path):
    cv = _cv(tmp_path, "trainer.folds=[2,4]", "trainer.epochs=1")
    assert [f.fold for f in cv.folds] == [2, 4]


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(NonFiniteLossError, match="optimizer.lr"):
        _cv(tmp_path, "optimizer.lr=1e30", "trainer.folds=[1]", "trainer.epochs=3")


def test_early_stopping_stops_a_fold(tmp_path):
    # lr=1e-9 cannot improve val accuracy, so patience 2 stops after 3 epochs.
    cv = _cv(tmp_path, "optimizer.lr=1e-9", "trainer.validation=test_fold", "trainer.early_stopping_patience=2",
             "trainer.folds=[1]", "trainer.epochs=20")
    assert cv.folds[0].epochs == 3
    assert "train_acc" in cv.folds[0].history[-1]


@pytest.mark.parametrize("option", ["precompute=false", "normalize=dataset", "kind=mfcc features.n_mfcc=20", "kind=stft"])
def test_feature_variants_train(tmp_path, option):
    cv = _cv(tmp_path, *f"features.{option}".split(), "trainer.folds=[1]")
    assert cv.folds[0].val_acc >= 0.6


@pytest.mark.parametrize(
    "options",
    [["trainer.ema_decay=0.5"], ["scheduler=onecycle"], ["optimizer=sgd", "optimizer.lr=0.1"], ["scheduler=none"]],
)
def test_training_options_learn(tmp_path, options):
    cv = _cv(tmp_path, *options, "trainer.folds=[1]", "trainer.epochs=12")
    assert cv.folds[0].val_acc >= 0.6


def test_timm_model_trains_one_epoch(tmp_path):
    cv = _cv(tmp_path, "model=resnet18", "trainer.folds=[1]", "trainer.epochs=1")
    assert 0 <= cv.folds[0].val_acc <= 1 and torch.isfinite(torch.tensor(cv.folds[0].train_loss))


def test_inner_validation_decides_on_a_grouped_stratified_split_of_the_training_folds(tmp_path):
    from esc_sweep.training.splits import inner_split

    targets = torch.tensor([c for c in range(4) for _ in range(12)])
    groups = [f"rec{i // 3}" for i in range(48)]  # 3 clips per recording, 4 recordings per class
    train = torch.arange(48)
    fit, select = inner_split(train, targets, groups, 0.25, seed=7)
    assert sorted(fit.tolist() + select.tolist()) == list(range(48))
    assert not {groups[i] for i in fit.tolist()} & {groups[i] for i in select.tolist()}, "a recording on both sides"
    assert torch.bincount(targets[select], minlength=4).tolist() == [3, 3, 3, 3]  # one recording per class
    assert torch.equal(inner_split(train, targets, groups, 0.25, seed=7)[1], select)  # deterministic

    cv = _cv(tmp_path, "trainer.validation=inner", "trainer.early_stopping_patience=2", "trainer.folds=[1,2]",
             "trainer.epochs=6")
    assert all(f.inner_acc is not None for f in cv.folds)
    assert all("inner_acc" in h for f in cv.folds for h in f.history)
    summary = cv.summary()
    assert cv.objective == summary["cv_inner_acc_mean"]  # a sweep maximises the inner score, not the test folds
    assert cv.to_dict()["validation"] == "inner" and "only scored" in cv.to_dict()["selection"]


def test_early_stopping_without_a_split_to_decide_on_is_refused(compose_cfg):
    from esc_sweep.config import validate
    from esc_sweep.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.early_stopping_patience.*trainer.validation=inner"):
        validate(compose_cfg(["trainer.early_stopping_patience=3"]))
