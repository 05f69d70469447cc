"""Progress of a cross-validation (folds, epochs, steps, each with an ETA), as a training callback.

On a terminal with ``trainer.progress=true``: rich bars, one for the folds (its
ETA is the whole run's), one for the epochs of each fold in training (the
fold's ETA) and one for the steps of its epoch. Log records print above the
bars (``esc_sweep.console.logs_above_progress``). Elsewhere (a log file, a
pipe) or with ``trainer.progress=false``: a plain line per finished fold and
one per epoch at most every ``PLAIN_EVERY_S`` seconds, with the same ETAs.

ETAs are averages since the start (rich's own estimate looks at the last 30 s
only, and an epoch is often longer): the folds bar advances by a fraction per
step, so it has an ETA from the first steps on. A jump (folds loaded from
checkpoints, a fold resumed mid-way) resets the clock instead of counting as
speed.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

from rich.console import Console

from esc_sweep.console import (
    PLAIN_EVERY_S,
    console,
    duration,
    live_bars,
    logs_above_progress,
    plain_print,
    progress_bar,
    remaining_seconds,
)
from esc_sweep.training.callbacks import Callback


def _label(fold: int) -> str:
    return "final fit" if fold == 0 else f"fold {fold}"


def _epoch_text(fold: int, epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    text = f"{_label(fold)} epoch {epoch}/{epochs}: loss {metrics['train_loss']:.3f}"
    val_acc = metrics.get("val_acc", math.nan)
    if not math.isnan(val_acc):  # a final fit has no validation clips
        text += f", val acc {val_acc:.3f}"
    return text


class TrainingProgress(Callback):
    """Folds, epochs and steps with ETAs; rich bars on a terminal, plain lines elsewhere."""

    def __init__(self, enabled: bool, num_folds: int, out: Optional[Console] = None,
                 get_time: Optional[Callable[[], float]] = None, every: float = PLAIN_EVERY_S):
        self.console = out or console
        self.get_time = get_time or time.monotonic
        self.fancy = live_bars(enabled, self.console)
        self.num_folds = num_folds
        self.every = every
        self.folds_done = 0  # finished folds (trained or loaded)
        self.epochs: dict[int, int] = {}  # epochs planned per fold in training
        self.planned_epochs = 0  # of the last fold started (the folds not started yet get as many)
        self.steps_per_epoch: dict[int, int] = {}
        self.steps_done: dict[int, int] = {}  # steps of the current epoch, per fold
        self.last_epoch: dict[int, int] = {}  # last epoch seen per fold (jumps reset the clocks)
        # Plain mode: time spent training, to estimate what is left.
        self.fold_started: dict[int, float] = {}
        self.epoch_seconds: list[float] = []
        self.last_line = -math.inf
        self.progress = progress_bar(self.console, self.get_time) if self.fancy else None
        self.folds_task = self.progress.add_task("folds", total=num_folds) if self.fancy and num_folds else None
        self.epoch_tasks: dict[int, Any] = {}
        self.step_tasks: dict[int, Any] = {}
        self._logs = None
        self.started = False

    # ---- rich display on and off

    def _start(self) -> None:
        if self.fancy and not self.started:
            self._logs = logs_above_progress(self.console)
            self._logs.__enter__()
            self.progress.start()
            self.started = True

    def _stop(self) -> None:
        if self.started:
            self.progress.stop()
            self._logs.__exit__(None, None, None)
            self._logs = None
            self.started = False

    # ---- hooks

    def on_cv_start(self, context: dict[str, Any]) -> None:
        self._start()

    def on_fold_start(self, fold: int, context: dict[str, Any]) -> None:
        self._start()
        self.epochs[fold] = self.planned_epochs = int(context["epochs"])
        self.steps_per_epoch[fold] = max(1, int(context["steps_per_epoch"]))
        self.last_epoch[fold] = 0
        self.fold_started[fold] = self.get_time()
        if self.fancy:
            for tasks in (self.epoch_tasks, self.step_tasks):
                if fold in tasks:
                    self.progress.remove_task(tasks.pop(fold))
            self.steps_done[fold] = 0
            self.epoch_tasks[fold] = self.progress.add_task(f"{_label(fold)} epoch 1/{self.epochs[fold]}",
                                                            total=self.epochs[fold])
            self.step_tasks[fold] = self.progress.add_task("  steps", total=self.steps_per_epoch[fold])

    def on_step_end(self, fold: int, step: int) -> None:
        if not self.fancy or fold not in self.step_tasks:
            return
        per_epoch = self.steps_per_epoch[fold]
        self.progress.advance(self.step_tasks[fold])
        self.progress.advance(self.epoch_tasks[fold], 1 / per_epoch)
        if self.folds_task is not None:
            self.progress.advance(self.folds_task, 1 / (per_epoch * self.epochs[fold]))
        self.steps_done[fold] = self.steps_done.get(fold, 0) + 1
        if self.steps_done[fold] == per_epoch:
            # The epoch's steps are done and its evaluation runs (seconds to minutes): the counter says
            # this epoch, so the label must too, not the one before it.
            epoch = self.last_epoch.get(fold, 0) + 1
            self.progress.update(self.epoch_tasks[fold], completed=epoch,
                                 description=f"{_label(fold)} epoch {epoch}/{self.epochs[fold]}: evaluating")

    def on_epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        epochs = self.epochs.get(fold, epoch)
        jumped = epoch != self.last_epoch.get(fold, 0) + 1  # resumed inside the fold
        self.last_epoch[fold] = epoch
        self.steps_done[fold] = 0
        now = self.get_time()
        if self.fancy and fold in self.epoch_tasks:
            text = _epoch_text(fold, epoch, epochs, metrics)
            if jumped:  # epochs restored from a checkpoint took no time now: restart the clocks
                self.progress.reset(self.epoch_tasks[fold], completed=epoch, description=text)
                if self.folds_task is not None:
                    self.progress.reset(self.folds_task, completed=self.folds_done + epoch / epochs)
            else:
                # Snap to whole epochs (early steps may not sum to exactly 1.0).
                self.progress.update(self.epoch_tasks[fold], completed=epoch, description=text)
            self.progress.reset(self.step_tasks[fold])
            return
        if not jumped:
            self.epoch_seconds.append(now - self.fold_started.get(fold, now))
        self.fold_started[fold] = now  # the next epoch's clock
        if now - self.last_line >= self.every or epoch in (1, epochs):  # each fold's first: its first ETA
            self.last_line = now
            text = _epoch_text(fold, epoch, epochs, metrics)
            if self.epoch_seconds:
                per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
                text += f"; {'fold ETA' if fold else 'ETA'} {duration((epochs - epoch) * per_epoch)}"
                if self.num_folds > 1:
                    text += f", all folds ETA {duration(self._all_folds_seconds(per_epoch))}"
            plain_print(text, self.console)

    def _all_folds_seconds(self, per_epoch: float) -> float:
        """Wall time left: the epochs left, sharing the clock among the folds training at once (parallel_folds)."""
        return self._epochs_left() * per_epoch / max(1, len(self.epochs))

    def _epochs_left(self) -> int:
        """Epochs still to train: the rest of the folds in training, all of those not started."""
        planned = max(self.epochs.values(), default=self.planned_epochs)
        not_started = max(0, self.num_folds - self.folds_done - len(self.epochs))
        return sum(self.epochs[f] - self.last_epoch.get(f, 0) for f in self.epochs) + not_started * planned

    def on_fold_end(self, result, resumed: bool = False) -> None:
        self.folds_done += 1
        fold = result.fold
        if resumed:
            plain_print(f"{_label(fold)}: finished earlier, loaded from its checkpoint "
                        f"(val acc {result.val_acc:.3f})", self.console)
            if self.folds_task is not None:  # took no time now: restart the clock
                self.progress.reset(self.folds_task, completed=self.folds_done)
            return
        for tasks in (self.epoch_tasks, self.step_tasks):
            if fold in tasks:
                self.progress.remove_task(tasks.pop(fold))
        self.epochs.pop(fold, None)
        self.last_epoch.pop(fold, None)
        if self.folds_task is not None:
            self.progress.update(self.folds_task, completed=self.folds_done)
        line = f"{_label(fold)} done: val acc {result.val_acc:.3f} after {result.epochs} " \
               f"epoch{'' if result.epochs == 1 else 's'} in {duration(result.seconds)}"
        if self.num_folds:
            line += f" ({self.folds_done}/{self.num_folds} folds"
            eta = self._folds_eta()
            line += f", ETA {duration(eta)})" if eta is not None and self.folds_done < self.num_folds else ")"
        plain_print(line, self.console)

    def _folds_eta(self) -> Optional[float]:
        if self.folds_task is not None:
            task = next(t for t in self.progress.tasks if t.id == self.folds_task)
            return remaining_seconds(task.completed, task.total, task.elapsed)
        if not self.epoch_seconds:
            return None
        return self._all_folds_seconds(sum(self.epoch_seconds) / len(self.epoch_seconds))

    def on_model_trained(self, fold: int, model: Any) -> None:
        if fold == 0:  # a final fit has no fold end
            self._stop()

    def on_cv_end(self, result) -> None:
        self._stop()

    def on_exception(self, error: BaseException) -> None:
        self._stop()
