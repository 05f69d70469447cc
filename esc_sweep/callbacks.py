"""Hooks the trainer calls as a cross-validation goes on.

Tracking (MLflow), progress display and sweep pruning are callbacks, so the
trainer knows none of them. Every method is optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from esc_sweep.results import CVResult, FoldResult


class Callback:
    def on_cv_start(self, context: dict[str, Any]) -> None:
        """Called once data and features are ready: context has config, clips, device, ..."""

    def on_fold_start(self, fold: int, context: dict[str, Any]) -> None:
        """Before fold ``fold`` trains; context has the model and its parameter count."""

    def on_epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch; raising here (e.g. optuna.TrialPruned) stops the run."""

    def on_model_trained(self, fold: int, model: Any) -> None:
        """The model a fold was evaluated with (the EMA copy when EMA is on), after training."""

    def on_fold_end(self, result: "FoldResult", resumed: bool = False) -> None:
        """After a fold finishes, or when it is loaded from a checkpoint (resumed=True)."""

    def on_cv_end(self, result: "CVResult") -> None:
        """After all folds, with aggregates."""

    def on_exception(self, error: BaseException) -> None:
        """The run stops with ``error`` (KeyboardInterrupt for Ctrl-C); it is re-raised afterwards."""


class CallbackList(Callback):
    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)

    def on_cv_start(self, context):
        for cb in self.callbacks:
            cb.on_cv_start(context)

    def on_fold_start(self, fold, context):
        for cb in self.callbacks:
            cb.on_fold_start(fold, context)

    def on_epoch_end(self, fold, epoch, metrics):
        for cb in self.callbacks:
            cb.on_epoch_end(fold, epoch, metrics)

    def on_model_trained(self, fold, model):
        for cb in self.callbacks:
            cb.on_model_trained(fold, model)

    def on_fold_end(self, result, resumed=False):
        for cb in self.callbacks:
            cb.on_fold_end(result, resumed)

    def on_cv_end(self, result):
        for cb in self.callbacks:
            cb.on_cv_end(result)

    def on_exception(self, error):
        for cb in self.callbacks:
            cb.on_exception(error)
