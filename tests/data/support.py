"""Helpers for the data-layer property tests: a per-example time limit and outcome tallies."""

from __future__ import annotations

import re
import signal
import threading
from collections import Counter
from contextlib import contextmanager

import pytest


class Hung(Exception):
    """An operation ran past its time limit (a hang, e.g. a FIFO opened for reading)."""


@contextmanager
def time_limit(seconds: int, what: str):
    """Raise Hung when the block runs longer than ``seconds`` (SIGALRM; main thread only).

    A blocking ``open()`` of a FIFO is interrupted too: the signal handler
    raises, so the interrupted system call is not retried.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise Hung(f"{what} did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# Message patterns -> short reason names for the tallies (first match wins).
REASONS = [
    ("not-regular", r"is not a regular file \(it is"),
    ("empty-file", r"is empty \(0 bytes\)"),
    ("too-long", r"s limit for one recording"),
    ("truncated", r"is truncated"),
    ("nan-inf", r"NaN or infinite"),
    ("overflow", r"too large to process"),
    ("no-samples", r"contains no audio samples"),
    ("bad-rate", r"invalid sample rate|invalid channel count|cannot resample"),
    ("undecodable", r"cannot decode audio file"),
    ("unreadable", r"cannot read|cannot list"),
    ("same-file-two-classes", r"so it has no single label"),
    ("same-file-listed-twice", r"lists one audio file twice"),
    ("no-audio", r"has no audio files"),
]


def reason_of(message: str) -> str:
    for name, pattern in REASONS:
        if re.search(pattern, message):
            return name
    return "other"


class Tally:
    """Outcome counts of one test module, printed at its end (also without ``-s``)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.counts: Counter = Counter()
        self.cases = 0

    def case(self) -> None:
        self.cases += 1

    def add(self, outcome: str) -> None:
        self.counts[outcome] += 1

    def report(self, config: pytest.Config) -> None:
        lines = [f"{self.title}: {self.cases} generated cases"]
        lines += [f"  {key}: {n}" for key, n in sorted(self.counts.items())]
        writer = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if writer is None or capture is None:
            print("\n".join(lines))
            return
        with capture.global_and_fixture_disabled():  # show the tallies without -s
            writer.write_line("")
            for line in lines:
                writer.write_line(line)
