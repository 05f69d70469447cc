"""trainer.repeats (the whole CV with N seeds, resumable per repeat), the 95 % interval of
every CV, and non-finite values failing a run wherever they appear. One test runs folds in
multiprocessing worker processes (trainer.parallel_folds)."""

from __future__ import annotations

import statistics

import pytest
from scipy import stats as scipy_stats

from esc_sweep.errors import NonFiniteLossError
from esc_sweep.training.callbacks import Callback
from esc_sweep.training.cv import cross_validate
from tests.conftest import FAST_SYNTHETIC, compose_config


def _cv(tmp_path, *extra, callbacks=None):
    cfg = compose_config(FAST_SYNTHETIC + ["tracking.enabled=false", f"trainer.checkpoint_dir={tmp_path}/ck", *extra])
    return cross_validate(cfg, callbacks)


class Events(Callback):
    def __init__(self):
        self.repeats, self.trained, self.resumed = [], [], []

    def on_repeat_start(self, repeat, seed):
        self.repeats.append((repeat, seed))

    def on_fold_end(self, result, resumed=False):
        (self.resumed if resumed else self.trained).append((result.repeat, result.fold))


def test_repeats_train_every_fold_per_seed_and_report_the_seed_spread(tmp_path):
    events = Events()
    cv = _cv(tmp_path, "trainer.repeats=3", "trainer.folds=[1,2]", "trainer.epochs=2", "trainer.seed=5",
             callbacks=[events])
    assert [(f.repeat, f.fold) for f in cv.folds] == [(r, f) for r in range(3) for f in (1, 2)]
    assert events.repeats == [(0, 5), (1, 6), (2, 7)]
    # Repeat r is the plain run with seed + r: repeat 0 is bit for bit the seed-5 run.
    plain = _cv(tmp_path / "plain", "trainer.folds=[1,2]", "trainer.epochs=2", "trainer.seed=5")
    assert [h["train_loss"] for h in cv.folds[0].history] == [h["train_loss"] for h in plain.folds[0].history]
    losses = {r: [h["train_loss"] for h in cv.folds[2 * r].history] for r in range(3)}
    assert losses[0] != losses[1] != losses[2]  # other seeds train differently
    summary = cv.summary()
    assert summary["cv_repeats"] == 3
    assert summary["cv_val_acc_mean"] == pytest.approx(statistics.fmean(f.val_acc for f in cv.folds))
    per_repeat = [statistics.fmean(f.val_acc for f in cv.folds if f.repeat == r) for r in range(3)]
    assert summary["cv_val_acc_seed_std"] == pytest.approx(statistics.stdev(per_repeat))
    # The interval's unit is the fold (its repeats averaged): 2 folds, 1 degree of freedom.
    fold_means = [statistics.fmean(f.val_acc for f in cv.folds if f.fold == k) for k in (1, 2)]
    expected = scipy_stats.t.interval(0.95, 1, loc=statistics.fmean(fold_means), scale=scipy_stats.sem(fold_means))
    if statistics.stdev(fold_means) > 0:
        assert (summary["cv_val_acc_ci95_low"], summary["cv_val_acc_ci95_high"]) == pytest.approx(expected)
    assert cv.to_dict()["data"]["repeats"] == 3 and cv.to_dict()["folds"][-1]["repeat"] == 2

    again = Events()  # the same command after a completed run starts afresh, as without repeats
    _cv(tmp_path, "trainer.repeats=3", "trainer.folds=[1,2]", "trainer.epochs=2", "trainer.seed=5", callbacks=[again])
    assert len(again.trained) == 6


def test_an_interrupted_repeat_resumes_its_own_folds(tmp_path):
    class StopInRepeat1(Events):
        def on_fold_end(self, result, resumed=False):
            super().on_fold_end(result, resumed)
            if result.repeat == 1 and result.fold == 1 and not resumed:
                raise KeyboardInterrupt

    first = StopInRepeat1()
    with pytest.raises(KeyboardInterrupt):
        _cv(tmp_path, "trainer.repeats=2", "trainer.folds=[1,2]", "trainer.epochs=1", callbacks=[first])
    assert first.trained == [(0, 1), (0, 2), (1, 1)]
    second = Events()
    cv = _cv(tmp_path, "trainer.repeats=2", "trainer.folds=[1,2]", "trainer.epochs=1", callbacks=[second])
    # Fold 1 of repeat 1 was saved before the interrupt: only fold 2 of repeat 1 is left to train.
    assert second.resumed == [(0, 1), (0, 2), (1, 1)] and second.trained == [(1, 2)]
    assert len(cv.folds) == 4


def test_a_single_run_reports_its_interval(tmp_path):
    cv = _cv(tmp_path, "trainer.folds=[1,2,3]", "trainer.epochs=2")
    values = [f.val_acc for f in cv.folds]
    low, high = cv.summary()["cv_val_acc_ci95_low"], cv.summary()["cv_val_acc_ci95_high"]
    if statistics.stdev(values) > 0:
        assert (low, high) == pytest.approx(scipy_stats.t.interval(0.95, 2, loc=statistics.fmean(values),
                                                                    scale=scipy_stats.sem(values)))
    assert low <= cv.mean_val_acc <= high
    assert "cv_val_acc_seed_std" not in cv.summary()


def test_a_loss_that_blows_up_in_the_only_epoch_fails_the_run(tmp_path):
    """The issue's case: lr=1e30, one epoch. The training loss of that epoch was measured before the
    step that blew up; the validation loss after it is NaN, and that must fail the run too."""
    with pytest.raises(NonFiniteLossError, match=r"fold 1, epoch 1: .*validation loss is nan"):
        _cv(tmp_path, "optimizer.lr=1e30", "trainer.folds=[1]", "trainer.epochs=1")


@pytest.mark.parametrize("validation", ["inner", "none"])
def test_no_epoch_record_with_a_non_finite_value_reaches_a_callback(tmp_path, validation):
    seen = []

    class Watch(Callback):
        def on_epoch_end(self, fold, epoch, metrics):
            seen.append(dict(metrics))

    with pytest.raises(NonFiniteLossError):
        _cv(tmp_path, "optimizer.lr=1e30", "trainer.folds=[1]", "trainer.epochs=3",
            f"trainer.validation={validation}", callbacks=[Watch()])
    assert all(v == v for record in seen for v in record.values() if isinstance(v, float))  # no NaN passed on


def test_parallel_folds_run_per_repeat_with_the_sequential_numbers(tmp_path):
    common = ["trainer.repeats=2", "trainer.folds=[1,2]", "trainer.epochs=1", "trainer.num_threads=1"]
    parallel = _cv(tmp_path / "p", *common, "trainer.parallel_folds=2")
    sequential = _cv(tmp_path / "s", *common)
    assert [(f.repeat, f.fold, f.val_acc, f.val_loss) for f in parallel.folds] == \
        [(f.repeat, f.fold, f.val_acc, f.val_loss) for f in sequential.folds]
