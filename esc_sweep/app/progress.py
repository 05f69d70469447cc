"""Progress bars for folds, epochs and steps, as a training callback; silent when disabled."""

from __future__ import annotations

import math
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from esc_sweep.console import console
from esc_sweep.training.callbacks import Callback


class TrainingProgress(Callback):
    """One bar for the folds, one for the epochs of the fold in training, one for its steps."""

    def __init__(self, enabled: bool, num_folds: int):
        self.enabled = enabled
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self.folds = self.progress.add_task("folds", total=num_folds) if num_folds else None
        self.epochs = None
        self.steps = None
        self.started = False

    def _start(self) -> None:
        if not self.started:
            self.progress.start()
            self.started = True

    def _stop(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False

    def on_cv_start(self, context: dict[str, Any]) -> None:
        self._start()

    def on_fold_start(self, fold: int, context: dict[str, Any]) -> None:
        self._start()
        for task in (self.epochs, self.steps):
            if task is not None:
                self.progress.remove_task(task)
        label = "final fit" if fold == 0 else f"fold {fold}"
        self.epochs = self.progress.add_task(f"{label} epochs", total=context["epochs"])
        self.steps = self.progress.add_task("  steps", total=context["steps_per_epoch"])

    def on_step_end(self, fold: int, step: int) -> None:
        self.progress.advance(self.steps)

    def on_epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        self.progress.reset(self.steps)
        label = "final fit" if fold == 0 else f"fold {fold}"
        text = f"{label} epoch {epoch}: loss {metrics['train_loss']:.3f}"
        if not math.isnan(metrics.get("val_acc", math.nan)):
            text += f" val acc {metrics['val_acc']:.3f}"
        self.progress.update(self.epochs, advance=1, description=text)

    def on_fold_end(self, result, resumed: bool = False) -> None:
        if resumed:
            self.console.print(f"[yellow]fold {result.fold}: finished earlier, loaded from its checkpoint")
        if self.folds is not None:
            self.progress.advance(self.folds)

    def on_model_trained(self, fold: int, model: Any) -> None:
        if fold == 0:  # a final fit has no fold end
            self._stop()

    def on_cv_end(self, result) -> None:
        self._stop()

    def on_exception(self, error: BaseException) -> None:
        self._stop()
