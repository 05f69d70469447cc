"""A fold stopped part-way resumes from its saved state and ends with the numbers of an uninterrupted run."""

from __future__ import annotations

import logging

import pytest
import torch

from esc_sweep.config import validate
from esc_sweep.errors import ConfigError
from esc_sweep.training.callbacks import Callback
from esc_sweep.training.checkpoint import FoldCheckpoints, config_key
from esc_sweep.training.fold import prepare, run_fold
from tests.conftest import FAST_SYNTHETIC, compose_config

# Everything that draws random numbers or carries state across epochs: augmentation (gain, shifts,
# masks, mixup), dropout, EMA weights, gradient clipping, a warm-up + cosine schedule.
RANDOM_AND_STATEFUL = ["augmentation=default", "model.dropout=0.3", "trainer.ema_decay=0.9",
                       "trainer.grad_clip=1.0", "trainer.label_smoothing=0.1", "trainer.epochs=6",
                       "trainer.train_eval_every=2"]
TIMINGS = ("epoch_seconds", "train_seconds", "eval_seconds")


def _config(*extra: str):
    return compose_config(FAST_SYNTHETIC + ["tracking.enabled=false", *extra])


@pytest.fixture(scope="module")
def features():
    device = torch.device("cpu")
    return device, prepare(_config(), device)


class StopDuring(Callback):
    """Raise KeyboardInterrupt (what Ctrl-C raises) at the first step of ``epoch``."""

    def __init__(self, epoch: int):
        self.epoch, self.training = epoch, 1

    def on_epoch_end(self, fold, epoch, metrics):
        self.training = epoch + 1

    def on_step_end(self, fold, step):
        if self.training == self.epoch:
            raise KeyboardInterrupt


class EpochsSeen(Callback):
    def __init__(self):
        self.epochs: list[int] = []

    def on_epoch_end(self, fold, epoch, metrics):
        self.epochs.append(epoch)


def _fold(features, cfg, checkpoints=None, callback=None, fold=1):
    device, (clips, spectrograms, targets) = features
    return run_fold(cfg, clips, spectrograms, targets, fold, device, callback or Callback(), checkpoints=checkpoints)


def _without_timings(history):
    return [{k: v for k, v in record.items() if k not in TIMINGS} for record in history]


def assert_same_numbers(resumed, straight):
    assert _without_timings(resumed.history) == _without_timings(straight.history)  # exact floats, every epoch
    assert resumed.confusion == straight.confusion
    assert (resumed.val_acc, resumed.val_loss, resumed.val_f1, resumed.train_acc, resumed.train_loss, resumed.epochs) \
        == (straight.val_acc, straight.val_loss, straight.val_f1, straight.train_acc, straight.train_loss,
            straight.epochs)


@pytest.mark.parametrize(("every", "stop_during", "saved_after"), [(1, 4, 3), (2, 4, 2), (2, 6, 4)])
def test_a_fold_resumed_after_ctrl_c_ends_exactly_as_an_uninterrupted_one(features, tmp_path, every, stop_during,
                                                                          saved_after):
    cfg = _config(*RANDOM_AND_STATEFUL, f"trainer.checkpoint_every={every}")
    straight = _fold(features, cfg)

    checkpoints = FoldCheckpoints(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        _fold(features, cfg, checkpoints, StopDuring(stop_during))
    assert checkpoints.progress(1).saved_epoch() == saved_after
    kept = checkpoints.kept([1, 2])
    assert (kept.finished, kept.in_progress) == ([], {1: saved_after})

    seen = EpochsSeen()
    resumed = _fold(features, cfg, checkpoints, seen)
    assert_same_numbers(resumed, straight)
    assert seen.epochs == [1, 2, 3, 4, 5, 6]  # the saved epochs are replayed to the callbacks, then the rest train
    # Sanity: the run really is random and stateful, so a resume that dropped any state would show.
    assert len({h["train_loss"] for h in straight.history}) == 6
    assert straight.history[0]["lr"] != straight.history[-1]["lr"]


def test_the_saved_state_is_deleted_once_the_fold_result_is_saved(features, tmp_path):
    cfg = _config("trainer.epochs=3")
    checkpoints = FoldCheckpoints(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        _fold(features, cfg, checkpoints, StopDuring(3))
    progress = checkpoints.progress(1).path
    assert progress.is_file()
    result = _fold(features, cfg, checkpoints)
    assert progress.is_file()  # until the result is safely written, the part-way state stays
    checkpoints.save(result)
    assert not progress.exists()
    # .lock: the folder is held by this process (two runs never train into one folder)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == ["fold_1.json"]
    kept = checkpoints.kept()
    assert (kept.finished, kept.in_progress) == ([1], {})


def test_the_last_epoch_is_not_saved_and_checkpoint_every_0_saves_nothing(features, tmp_path):
    class Listing(Callback):
        """What the checkpoint folder holds at each epoch's end (before that epoch's save)."""

        def __init__(self, checkpoints: FoldCheckpoints):
            self.checkpoints, self.seen = checkpoints, []

        def on_epoch_end(self, fold, epoch, metrics):
            files = sorted(p.name for p in self.checkpoints.directory.iterdir() if p.name != ".lock")
            self.seen.append((files, self.checkpoints.progress(1).saved_epoch()))

    on = Listing(FoldCheckpoints(tmp_path / "on"))
    _fold(features, _config("trainer.epochs=3", "trainer.checkpoint_every=1"), on.checkpoints, on)
    assert on.seen == [([], None), (["fold_1.in_progress.pt"], 1), (["fold_1.in_progress.pt"], 2)]
    assert on.checkpoints.progress(1).saved_epoch() == 2  # the last epoch ends the fold: nothing to resume

    off = Listing(FoldCheckpoints(tmp_path / "off"))
    _fold(features, _config("trainer.epochs=3", "trainer.checkpoint_every=0"), off.checkpoints, off)
    assert off.seen == [([], None)] * 3
    assert [p.name for p in off.checkpoints.directory.iterdir()] == [".lock"]


def test_early_stopping_counters_survive_the_resume(features, tmp_path):
    # lr=1e-9 cannot improve the deciding accuracy: epoch 1 sets the best and patience 4 stops after
    # epoch 5. Stopped during epoch 4 (two epochs without gain saved), a resume that forgot the counters
    # would train to epoch 8.
    cfg = _config("optimizer.lr=1e-9", "trainer.validation=test_fold", "trainer.early_stopping_patience=4",
                  "trainer.epochs=20")
    straight = _fold(features, cfg)
    assert straight.epochs == 5
    checkpoints = FoldCheckpoints(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        _fold(features, cfg, checkpoints, StopDuring(4))
    assert_same_numbers(_fold(features, cfg, checkpoints), straight)


def test_an_unreadable_saved_state_is_trained_again_with_a_warning(features, tmp_path, caplog):
    cfg = _config("trainer.epochs=3")
    straight = _fold(features, cfg)
    checkpoints = FoldCheckpoints(tmp_path)
    checkpoints.progress(1).path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING):
        again = _fold(features, cfg, checkpoints)
    assert_same_numbers(again, straight)
    assert f"fold 1: the state saved part-way, {checkpoints.progress(1).path}, is unreadable" in caplog.text
    assert "training the fold from the start" in caplog.text


def test_a_state_saved_for_another_model_is_not_loaded_into_this_one(features, tmp_path, caplog):
    checkpoints = FoldCheckpoints(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        _fold(features, _config("trainer.epochs=3", "model.width=16"), checkpoints, StopDuring(3))
    cfg = _config("trainer.epochs=3")
    with caplog.at_level(logging.WARNING):
        again = _fold(features, cfg, checkpoints)
    assert "does not fit this model (its weights have other names or shapes); training the fold from the start" \
        in caplog.text
    assert_same_numbers(again, _fold(features, cfg))


def test_checkpoint_every_does_not_change_the_checkpoint_folder_and_must_not_be_negative():
    assert config_key(_config("trainer.checkpoint_every=1"), "data") == config_key(
        _config("trainer.checkpoint_every=7"), "data")
    assert config_key(_config("trainer.epochs=3"), "data") != config_key(_config("trainer.epochs=4"), "data")
    with pytest.raises(ConfigError, match=r"trainer.checkpoint_every=-1: must be >= 0"):
        validate(_config("trainer.checkpoint_every=-1"))
