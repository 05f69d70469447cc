"""Callbacks built on a background thread behave like the callback itself."""

from __future__ import annotations

import threading
import time

import pytest

from esc_sweep.callbacks import BuiltInBackground, Callback


class Recorder(Callback):
    def __init__(self):
        self.calls = []
        self.parent_run_id = "abc"
        self.built_on = threading.current_thread().name

    def on_cv_start(self, context):
        self.calls.append(("cv_start", context["n"]))

    def on_fold_start(self, fold, context):
        self.calls.append(("fold_start", fold))

    def on_epoch_end(self, fold, epoch, metrics):
        self.calls.append(("epoch_end", fold, epoch, metrics["acc"]))

    def on_model_trained(self, fold, model):
        self.calls.append(("model_trained", fold))

    def on_fold_end(self, result, resumed=False):
        self.calls.append(("fold_end", result, resumed))

    def on_cv_end(self, result):
        self.calls.append(("cv_end", result))

    def on_exception(self, error):
        self.calls.append(("exception", type(error).__name__))


def _slow_recorder() -> Recorder:
    time.sleep(0.2)  # a slow import
    return Recorder()


def test_hooks_and_attributes_reach_the_callback_built_on_another_thread():
    proxy = BuiltInBackground(_slow_recorder, name="rec")
    started = time.perf_counter()
    proxy.on_cv_start({"n": 3})  # waits for the construction
    assert time.perf_counter() - started > 0.1
    proxy.on_fold_start(1, {})
    proxy.on_epoch_end(1, 1, {"acc": 0.5})
    proxy.on_model_trained(1, None)
    proxy.on_fold_end("r1", resumed=True)
    proxy.on_cv_end("cv")
    proxy.on_exception(KeyboardInterrupt())
    recorder = proxy.built
    assert recorder.built_on == "esc_sweep-build-rec"
    assert recorder.calls == [("cv_start", 3), ("fold_start", 1), ("epoch_end", 1, 1, 0.5), ("model_trained", 1),
                              ("fold_end", "r1", True), ("cv_end", "cv"), ("exception", "KeyboardInterrupt")]
    assert proxy.parent_run_id == "abc" and proxy.name == "rec"
    with pytest.raises(AttributeError):
        proxy.no_such_attribute


def test_a_construction_error_is_raised_by_the_first_hook_and_not_by_cleanup():
    def broken() -> Callback:
        raise ValueError("cannot build")

    proxy = BuiltInBackground(broken)
    proxy.on_exception(RuntimeError("training failed"))  # nothing was built: nothing to clean up
    with pytest.raises(ValueError, match="cannot build"):
        proxy.on_cv_start({"n": 1})
