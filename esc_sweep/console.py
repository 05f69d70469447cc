"""The one rich console every message and progress bar goes through (stderr, so stdout stays for results),
and the progress display every phase uses (``phase``, ``progress_bar``).

Two ways to show progress:

* on a terminal (and ``trainer.progress=true``): rich bars with an ETA column.
  While a bar is live, log records are printed through the same console
  (``logs_above_progress``), so they appear on their own line above the bar
  instead of breaking it;
* otherwise (a log file, a pipe, ``trainer.progress=false``): a plain line now
  and then (``PlainProgress``), each line whole, with the same ETA.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

# soft_wrap: a message is one line however long (a terminal folds it; logs and tests see one line).
console = Console(stderr=True, soft_wrap=True)

# Plain progress: at most one line per this many seconds (and one when a phase ends).
PLAIN_EVERY_S = 15.0
# A phase shorter than this prints nothing in plain mode.
QUIET_BELOW_S = 1.0


def live_bars(enabled: bool, out: Console) -> bool:
    """Rich bars only on a real terminal; elsewhere they would print once, at the end."""
    return bool(enabled) and out.is_terminal and not out.is_dumb_terminal


def duration(seconds: Optional[float]) -> str:
    """``1:02:03`` / ``2:03``, or ``-`` while unknown: the ETA and elapsed text of bars and plain lines."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def remaining_seconds(completed: float, total: Optional[float], elapsed: Optional[float]) -> Optional[float]:
    """Time left at the average rate since the start (or the last reset); None before any progress.

    The average, not rich's speed over the last 30 s: a fold or an epoch takes
    longer than that, and rich's estimate then shows nothing.
    """
    if not total or not completed or not elapsed or completed <= 0:
        return None
    return max(0.0, (total - completed) * elapsed / completed)


class EtaColumn(ProgressColumn):
    """``ETA 4:12`` while running, ``done in 1:02`` when finished."""

    def render(self, task: Task) -> Text:
        if task.finished:
            return Text(f"done in {duration(task.finished_time)}", style="progress.elapsed")
        eta = remaining_seconds(task.completed, task.total, task.elapsed)
        return Text(f"ETA {duration(eta)}", style="progress.remaining")


def progress_bar(out: Console, get_time: Optional[Callable[[], float]] = None) -> Progress:
    """A rich Progress on ``out``: description, bar, done/total, elapsed, ETA."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        EtaColumn(),
        console=out,
        transient=False,
        get_time=get_time,
    )


# --------------------------------------------------------------------------
# Logging while a bar is live


class ConsoleLogHandler(logging.Handler):
    """Prints log records through a rich console: above a live bar, never into it."""

    def __init__(self, out: Console, level: int = logging.NOTSET):
        super().__init__(level)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.out.print(Text(self.format(record)), soft_wrap=True)
        except Exception:
            self.handleError(record)


def _writes_to_terminal(handler: logging.Handler) -> bool:
    if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler):
        return False
    try:
        return bool(handler.stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or not a real stream
        return False


@contextmanager
def logs_above_progress(out: Console) -> Iterator[None]:
    """While a bar is live on ``out``: route the root logger's terminal handlers through ``out``.

    A StreamHandler holds the stream it was given (Hydra's writes to stdout);
    writing to the terminal behind the bar's back breaks the bar. Each such
    handler is swapped for a ConsoleLogHandler with the same level, filters and
    format, and put back afterwards. File handlers (Hydra's job log) and
    handlers writing elsewhere are left alone. With no handler at all, Python's
    last-resort handler (warnings to stderr) is swapped the same way.
    """
    root = logging.getLogger()
    swapped: list[tuple[int, logging.Handler, logging.Handler]] = []
    for index, handler in enumerate(list(root.handlers)):
        if _writes_to_terminal(handler):
            replacement = ConsoleLogHandler(out, handler.level)
            replacement.setFormatter(handler.formatter)
            for log_filter in handler.filters:
                replacement.addFilter(log_filter)
            swapped.append((index, handler, replacement))
    for _, handler, replacement in swapped:
        root.handlers[root.handlers.index(handler)] = replacement
    last_resort = logging.lastResort
    if last_resort is not None:
        logging.lastResort = ConsoleLogHandler(out, last_resort.level)
    try:
        yield
    finally:
        logging.lastResort = last_resort
        for _, handler, replacement in swapped:
            if replacement in root.handlers:
                root.handlers[root.handlers.index(replacement)] = handler


# --------------------------------------------------------------------------
# Plain lines (not a terminal, or progress bars off)


class PlainProgress:
    """``Decoding audio: 500/2000 (25%), 0:12 elapsed, ETA 0:36``, at most every ``every`` seconds.

    The same interface as one rich task (``advance``); thread-safe. ``finish``
    prints the closing line when the phase took at least ``QUIET_BELOW_S``.
    """

    def __init__(self, description: str, total: Optional[float], out: Console, *, every: float = PLAIN_EVERY_S,
                 get_time: Callable[[], float] = time.monotonic, header: Optional[str] = None):
        self.header = header  # printed once the phase has run QUIET_BELOW_S: quick phases print nothing
        self.description = description
        self.total = total
        self.out = out
        self.every = every
        self.get_time = get_time
        self.started = get_time()
        self.last_line = self.started
        self.completed = 0.0
        self._lock = threading.Lock()

    def advance(self, amount: float = 1) -> None:
        with self._lock:
            self.completed += amount
            now = self.get_time()
            if now - self.started >= QUIET_BELOW_S:
                self._announce()
            if now - self.last_line >= self.every and not (self.total and self.completed >= self.total):
                self.last_line = now
                self._print(self.line(now))

    def line(self, now: Optional[float] = None) -> str:
        elapsed = (self.get_time() if now is None else now) - self.started
        done = f"{self.completed:g}" if self.total is None else f"{self.completed:g}/{self.total:g}"
        percent = f" ({self.completed / self.total:.0%})" if self.total else ""
        eta = remaining_seconds(self.completed, self.total, elapsed)
        return f"{self.description}: {done}{percent}, {duration(elapsed)} elapsed, ETA {duration(eta)}"

    def finish(self) -> None:
        elapsed = self.get_time() - self.started
        if elapsed >= QUIET_BELOW_S:
            self._announce()
            self._print(f"{self.description}: {self.completed:g} done in {duration(elapsed)}")

    def _announce(self) -> None:
        if self.header is not None:
            header, self.header = self.header, None
            self._print(header)

    def _print(self, text: str) -> None:
        self.out.print(text, markup=False, highlight=False, soft_wrap=True)


class _RichPhase:
    def __init__(self, progress: Progress, task) -> None:
        self.progress, self.task = progress, task

    def advance(self, amount: float = 1) -> None:
        self.progress.advance(self.task, amount)


@contextmanager
def phase(description: str, total: Optional[float], enabled: bool = True, out: Optional[Console] = None, *,
          unit: str = "items", get_time: Optional[Callable[[], float]] = None,
          every: float = PLAIN_EVERY_S) -> Iterator:
    """Progress of one phase (decoding, spectrograms): yields an object with ``advance(n=1)``.

    A rich bar with an ETA on a terminal when ``enabled``; otherwise plain lines, only
    for a phase that takes a second or more: one saying what it is
    (``Decoding audio: 2000 files``), one every ``every`` seconds, and a closing one.
    """
    out = out or console
    if live_bars(enabled, out):
        bar = progress_bar(out, get_time)
        with logs_above_progress(out), bar:
            yield _RichPhase(bar, bar.add_task(description, total=total))
        return
    # A log shows what is under way once it takes a second; a quick phase (or one that fails at
    # once, whose error must be the only line) prints nothing.
    plain = PlainProgress(description, total, out, every=every, get_time=get_time or time.monotonic,
                          header=f"{description}: {'?' if total is None else f'{total:g}'} {unit}")
    yield plain
    plain.finish()


def plain_print(text: str, out: Optional[Console] = None) -> None:
    """One plain line (no markup, no highlighting) on the console."""
    (out or console).print(text, markup=False, highlight=False, soft_wrap=True)


__all__ = ["console", "phase", "progress_bar", "logs_above_progress", "PlainProgress", "EtaColumn",
           "ConsoleLogHandler", "duration", "remaining_seconds", "live_bars", "plain_print"]
