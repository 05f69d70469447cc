"""Hooks the trainer calls as a cross-validation goes on.

Tracking (MLflow), progress display and sweep pruning are callbacks, so the
trainer knows none of them. Every method is optional. The calls, in order:
on_cv_start, then per repeat on_repeat_start and per fold on_fold_start, on_step_end (every step),
on_epoch_end (every epoch), on_model_trained, on_fold_end; finally on_cv_end,
or on_exception when the run stops. A final fit calls the per-fold hooks with
fold 0.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from esc_sweep.training.results import CVResult, FoldResult


class Callback:
    def on_cv_start(self, context: dict[str, Any]) -> None:
        """Called once data and features are ready: context has config, clips, device, ..."""

    def on_repeat_start(self, repeat: int, seed: int) -> None:
        """Before each repeat of the folds (``trainer.repeats``; repeat 0 is the plain run), with its seed."""

    def on_fold_start(self, fold: int, context: dict[str, Any]) -> None:
        """Before fold ``fold`` trains; context has the model and its parameter count."""

    def on_step_end(self, fold: int, step: int) -> None:
        """After each optimisation step (``step`` counts from 1 within the epoch). Keep it cheap: no host sync."""

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

    def on_repeat_start(self, repeat, seed):
        for cb in self.callbacks:
            cb.on_repeat_start(repeat, seed)

    def on_fold_start(self, fold, context):
        for cb in self.callbacks:
            cb.on_fold_start(fold, context)

    def on_step_end(self, fold, step):
        for cb in self.callbacks:
            cb.on_step_end(fold, step)

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
    """A callback built on a thread while the run gets going.

    For callbacks with slow imports (MLflow: 1-2 s): the import overlaps data
    loading and the first training steps instead of delaying them. Hooks
    called before the callback exists are queued and replayed, in order, on
    the building thread; later hooks go straight to it. An error raised while
    building or replaying is raised by the next hook. Attribute reads
    (``tracker.parent_run_id``) wait for everything queued.
    """

    def __init__(self, build: Callable[[], Callback], name: str = "callback"):
        self.name = name
        self._lock = threading.Lock()
        self._queue: list[tuple[str, tuple]] = []
        self._built: Callback | None = None  # set once the queue is empty: hooks then call it directly
        self._partial: Callback | None = None  # built, still replaying the queue
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._build, args=(build,), name=f"esc_sweep-build-{name}", daemon=True)
        self._thread.start()

    def _build(self, build: Callable[[], Callback]) -> None:
        try:
            self._partial = build()
            while True:
                with self._lock:
                    if not self._queue:
                        self._built = self._partial
                        return
                    hook, args = self._queue.pop(0)
                getattr(self._partial, hook)(*args)
        except BaseException as err:  # raised in the training thread by the next hook
            with self._lock:
                self._queue.clear()
                self._error = err

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _call(self, hook: str, *args: Any) -> None:
        with self._lock:
            waiting = self._built is None and self._error is None and self._thread.is_alive()
            if waiting:
                self._queue.append((hook, args))
                return
        self._raise_error()
        if self._built is None:  # building failed and its error was raised already
            return
        getattr(self._built, hook)(*args)

    @property
    def built(self) -> Callback:
        self._thread.join()
        self._raise_error()
        if self._built is None:
            raise RuntimeError(f"the {self.name} callback could not be built")
        return self._built

    def __getattr__(self, name: str) -> Any:  # only called for names this proxy lacks
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.built, name)

    def on_cv_start(self, context):
        self._call("on_cv_start", context)

    def on_repeat_start(self, repeat, seed):
        self._call("on_repeat_start", repeat, seed)

    def on_fold_start(self, fold, context):
        self._call("on_fold_start", fold, context)

    def on_epoch_end(self, fold, epoch, metrics):
        self._call("on_epoch_end", fold, epoch, dict(metrics))

    def on_model_trained(self, fold, model):
        self._call("on_model_trained", fold, model)

    def on_fold_end(self, result, resumed=False):
        self._call("on_fold_end", result, resumed)

    def on_cv_end(self, result):
        self._thread.join()  # everything queued is logged before the run ends
        self._call("on_cv_end", result)

    def on_exception(self, error):
        self._thread.join()
        target = self._built or self._partial
        self._error = None  # the run is stopping with ``error`` already
        if target is not None:
            target.on_exception(error)
