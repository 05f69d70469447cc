"""Hooks the trainer calls as a cross-validation goes on.

Tracking (MLflow), progress display and sweep pruning are callbacks, so the
trainer knows none of them. Every method is optional.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable

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


class BuiltInBackground(Callback):
    """A callback whose construction runs on a thread while the run gets going.

    For callbacks with slow imports (MLflow: 1-2 s): the import overlaps data
    loading and feature extraction instead of delaying them. Each hook waits
    for the construction and forwards to the built callback; so do attribute
    reads (``tracker.parent_run_id``). A construction error is raised by the
    first hook.
    """

    def __init__(self, build: Callable[[], Callback], name: str = "callback"):
        self.name = name
        self._built: Callback | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._build, args=(build,), name=f"esc_sweep-build-{name}", daemon=True)
        self._thread.start()

    def _build(self, build: Callable[[], Callback]) -> None:
        try:
            self._built = build()
        except BaseException as err:  # raised in the training thread by ``built``
            self._error = err

    @property
    def built(self) -> Callback:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._built  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Any:  # only called for names this proxy lacks
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.built, name)

    def on_cv_start(self, context):
        self.built.on_cv_start(context)

    def on_fold_start(self, fold, context):
        self.built.on_fold_start(fold, context)

    def on_epoch_end(self, fold, epoch, metrics):
        self.built.on_epoch_end(fold, epoch, metrics)

    def on_model_trained(self, fold, model):
        self.built.on_model_trained(fold, model)

    def on_fold_end(self, result, resumed=False):
        self.built.on_fold_end(result, resumed)

    def on_cv_end(self, result):
        self.built.on_cv_end(result)

    def on_exception(self, error):
        self._thread.join()
        if self._built is not None:  # nothing to clean up when it was never built
            self._built.on_exception(error)
