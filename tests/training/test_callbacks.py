"""Callbacks built on a background thread behave like the callback itself."""

from __future__ import annotations

import threading
import time

import pytest

from esc_sweep.training.callbacks import BuiltInBackground, Callback


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


def test_hooks_called_while_building_are_queued_and_replayed_in_order():
    proxy = BuiltInBackground(_slow_recorder, name="rec")
    started = time.perf_counter()
    proxy.on_cv_start({"n": 3})
    proxy.on_fold_start(1, {})
    metrics = {"acc": 0.5}
    proxy.on_epoch_end(1, 1, metrics)
    metrics["acc"] = 0.9  # the trainer may change its dict later: the queued call keeps the value it was given
    assert time.perf_counter() - started < 0.15  # the training thread did not wait for the slow build
    recorder = proxy.built  # waits for the build and the replay
    assert recorder.built_on == "esc_sweep-build-rec"
    proxy.on_model_trained(1, None)  # now straight to the callback
    proxy.on_fold_end("r1", resumed=True)
    proxy.on_cv_end("cv")
    proxy.on_exception(KeyboardInterrupt())
    assert recorder.calls == [("cv_start", 3), ("fold_start", 1), ("epoch_end", 1, 1, 0.5), ("model_trained", 1),
                              ("fold_end", "r1", True), ("cv_end", "cv"), ("exception", "KeyboardInterrupt")]
    assert proxy.parent_run_id == "abc" and proxy.name == "rec"
    with pytest.raises(AttributeError):
        proxy.no_such_attribute


def test_a_construction_error_is_raised_by_the_next_hook_and_not_by_cleanup():
    def broken() -> Callback:
        raise ValueError("cannot build")

    proxy = BuiltInBackground(broken)
    proxy._thread.join()
    with pytest.raises(ValueError, match="cannot build"):
        proxy.on_cv_start({"n": 1})
    proxy.on_exception(ValueError("cannot build"))  # nothing was built: nothing to clean up, no second error


def test_an_error_in_a_replayed_hook_is_raised_by_the_next_hook_and_cleanup_still_runs():
    class FailsAtStart(Recorder):
        def on_cv_start(self, context):
            raise RuntimeError("store is gone")

    def build() -> Recorder:
        time.sleep(0.1)
        return FailsAtStart()

    proxy = BuiltInBackground(build)
    proxy.on_cv_start({"n": 1})  # queued
    proxy._thread.join()
    with pytest.raises(RuntimeError, match="store is gone"):
        proxy.on_fold_start(1, {})
    proxy.on_exception(RuntimeError("store is gone"))
    assert proxy._partial.calls == [("exception", "RuntimeError")]
