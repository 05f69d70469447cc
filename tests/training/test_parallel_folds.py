"""trainer.parallel_folds: folds in worker processes give the sequential run's results, bit for bit.

The workers are multiprocessing spawn processes (training/parallel.py): these tests are not in-process."""

from __future__ import annotations

import pytest
import torch

from esc_sweep.errors import ConfigError, NonFiniteLossError
from esc_sweep.config import validate
from esc_sweep.training.callbacks import Callback
from esc_sweep.training.cv import cross_validate
from esc_sweep.training.parallel import plan_workers
from tests.conftest import FAST_SYNTHETIC, compose_config

# Default augmentation: the random streams (crops, masks, mixup) must also match.
BASE = FAST_SYNTHETIC + ["tracking.enabled=false", "augmentation=default", "trainer.epochs=3",
                         "trainer.num_threads=1", "trainer.folds=[1,2,3]"]


class Recorder(Callback):
    def __init__(self):
        self.events = []
        self.models = {}

    def on_fold_start(self, fold, context):
        self.events.append(("start", fold, context["epochs"]))

    def on_epoch_end(self, fold, epoch, metrics):
        self.events.append(("epoch", fold, epoch))

    def on_model_trained(self, fold, model):
        self.models[fold] = model

    def on_fold_end(self, result, resumed=False):
        self.events.append(("end", result.fold, resumed))


def _history(fold):
    return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in fold.history]


def test_parallel_folds_equal_sequential_bit_for_bit_and_replay_callbacks(tmp_path):
    sequential = cross_validate(compose_config(BASE + [f"trainer.checkpoint_dir={tmp_path}/a"]))
    recorder = Recorder()
    parallel = cross_validate(
        compose_config(BASE + [f"trainer.checkpoint_dir={tmp_path}/b", "trainer.parallel_folds=2"]), [recorder]
    )
    assert [f.fold for f in parallel.folds] == [1, 2, 3]  # config order, whatever finished first
    for seq, par in zip(sequential.folds, parallel.folds):
        assert _history(par) == _history(seq)  # exact float equality: same seeds, same thread count
        assert par.confusion == seq.confusion
        assert par.val_acc == seq.val_acc
    # Every fold's events reached the parent's callbacks, in order within the fold.
    for fold in (1, 2, 3):
        mine = [e for e in recorder.events if e[1] == fold]
        assert mine == [("start", fold, 3), ("epoch", fold, 1), ("epoch", fold, 2), ("epoch", fold, 3),
                        ("end", fold, False)]
        assert isinstance(recorder.models[fold], torch.nn.Module)


def test_parallel_run_resumes_finished_folds(tmp_path):
    checkpoint_dir = f"trainer.checkpoint_dir={tmp_path}/ck"
    first = cross_validate(compose_config(BASE + [checkpoint_dir, "trainer.folds=[1]"]))
    recorder = Recorder()
    # Other folds than the first run's: fold 1 is reused from its checkpoint, 2 and 3 train in parallel.
    second = cross_validate(compose_config(BASE + [checkpoint_dir, "trainer.parallel_folds=2"]), [recorder])
    assert ("end", 1, True) in recorder.events
    assert not [e for e in recorder.events if e[0] == "start" and e[1] == 1]
    assert _history(second.folds[0]) == _history(first.folds[0])


def test_worker_error_keeps_its_type_and_message(tmp_path):
    cfg = compose_config(BASE + [f"trainer.checkpoint_dir={tmp_path}/ck", "trainer.parallel_folds=2",
                                 "optimizer.lr=1e30"])
    with pytest.raises(NonFiniteLossError, match="training loss is"):
        cross_validate(cfg)


@pytest.mark.parametrize("value", [0, -1, 65])
def test_bad_parallel_folds_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match="trainer.parallel_folds"):
        validate(compose_config(FAST_SYNTHETIC + [f"trainer.parallel_folds={value}"]))


def test_plan_pins_cores_only_when_they_divide_evenly():
    cpu = torch.device("cpu")
    plans = plan_workers(2, cpu, None, cores=[0, 1, 2, 3])
    assert [(p.threads, p.cores) for p in plans] == [(2, (0, 1)), (2, (2, 3))]
    # 5 workers on 2 cores: one thread each, no pinning (pinning would put 3 on one core).
    plans = plan_workers(5, cpu, None, cores=[0, 1])
    assert [(p.threads, p.cores) for p in plans] == [(1, None)] * 5
    # An explicit thread count is kept (it decides the results, see training/parallel.py).
    assert {p.threads for p in plan_workers(2, cpu, 3, cores=[0, 1])} == {3}


class StopAfter(Callback):
    """Ctrl-C in the parent once ``epochs`` epoch events have arrived (from any fold)."""

    def __init__(self, epochs):
        self.left = epochs

    def on_epoch_end(self, fold, epoch, metrics):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def test_interrupted_parallel_run_resumes_to_the_uninterrupted_result(tmp_path):
    many_epochs = BASE + ["trainer.epochs=6", "trainer.checkpoint_every=1"]
    straight = cross_validate(compose_config(many_epochs + [f"trainer.checkpoint_dir={tmp_path}/a"]))
    cfg = compose_config(many_epochs + [f"trainer.checkpoint_dir={tmp_path}/b", "trainer.parallel_folds=3"])
    with pytest.raises(KeyboardInterrupt):
        cross_validate(cfg, [StopAfter(4)])
    # The workers are stopped: every fold is unfinished or saved part-way, none is lost or half-written.
    saved = sorted(p.name for p in (tmp_path / "b").rglob("fold_*"))
    assert saved, "an interrupted run kept nothing"
    resumed = cross_validate(cfg)
    for a, b in zip(straight.folds, resumed.folds):
        assert [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in b.history] == \
               [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in a.history]
        assert a.confusion == b.confusion
