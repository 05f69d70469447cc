"""Progress display: ETAs on bars and plain lines, log records never inside a bar.

Everything runs against a recording rich Console and a fake clock, so the ETA
text is exact: rich bars when the console is a terminal, plain lines when not.
"""

from __future__ import annotations

import io
import logging
import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from esc_sweep.app.progress import TrainingProgress
from esc_sweep.console import PlainProgress, duration, logs_above_progress, phase, remaining_seconds

BAR = "━"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    """What a log handler of Hydra's looks like when stdout is a terminal."""

    def isatty(self) -> bool:
        return True


def terminal_console(file: io.StringIO | None = None) -> Console:
    return Console(file=file or FakeTerminal(), force_terminal=True, width=120, record=True, color_system=None)


def screen(raw: str) -> list[str]:
    """The rows a terminal shows after ``raw``: text, \\r, \\n and the cursor-up / erase-line codes rich uses."""
    rows, row, col = [""], 0, 0
    for match in re.finditer(r"\x1b\[(\??)(\d*)([A-Za-z])|\r|\n|[^\x1b\r\n]+", raw):
        token = match.group(0)
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
            rows += [""] * (row + 1 - len(rows))
        elif match.group(3) == "A":
            row = max(0, row - int(match.group(2) or 1))
        elif match.group(3) == "K":
            rows[row] = ""  # rich erases whole lines (2K) after moving to column 0
        elif not token.startswith("\x1b"):
            line = rows[row].ljust(col)
            rows[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
    rows = [r.rstrip() for r in rows]
    while rows and not rows[-1]:  # lines a bar left when it shrank
        rows.pop()
    return rows


def plain_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=200, record=True)


@pytest.fixture
def terminal_log_handler():
    """A root handler writing to the terminal the bars are drawn on, like Hydra's console handler on a tty."""
    terminal = FakeTerminal()
    handler = logging.StreamHandler(terminal)
    handler.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield terminal, handler
    root.removeHandler(handler)
    root.setLevel(old_level)


def lines(out: Console) -> list[str]:
    return [line.rstrip() for line in out.export_text(styles=False).splitlines()]



def test_duration_and_remaining_seconds():
    assert duration(None) == "-" and duration(float("nan")) == "-"
    assert duration(70) == "1:10" and duration(3725) == "1:02:05"
    assert remaining_seconds(0, 10, 5.0) is None  # nothing done yet: unknown, not infinite
    assert remaining_seconds(1, 4, 10.0) == 30.0


def test_training_bars_show_fold_and_epoch_etas_and_logs_print_above_them(terminal_log_handler):
    terminal, handler = terminal_log_handler
    out, clock = terminal_console(terminal), Clock()
    progress = TrainingProgress(True, num_folds=2, out=out, get_time=clock)
    assert progress.fancy
    progress.on_cv_start({})
    progress.on_fold_start(1, {"epochs": 4, "steps_per_epoch": 2})
    progress.progress.refresh()
    assert screen(terminal.getvalue())[1].startswith("fold 1 epoch 1/4 ")  # the epoch under way, 0/4 done
    clock.now += 5.0
    progress.on_step_end(1, 1)
    logging.getLogger("esc_sweep.test").warning("a message mid-fold")
    clock.now += 5.0
    progress.on_step_end(1, 2)
    # The steps are done, the evaluation runs: label and counter both say epoch 1 (not the label behind).
    progress.progress.refresh()
    row = next(r for r in screen(terminal.getvalue())[::-1] if r.startswith("fold 1 "))
    assert row.startswith("fold 1 epoch 1/4: evaluating") and " 1/4 " in row, row
    progress.on_epoch_end(1, 1, {"train_loss": 1.23456, "val_acc": 0.5})
    progress.progress.refresh()
    rows = screen(terminal.getvalue())
    # The record is a row of its own above the bars, written through the console (which erased the
    # bars first and drew them again below it), not into the middle of a bar.
    assert rows[0] == "[esc_sweep.test][WARNING] - a message mid-fold"
    assert sum("a message mid-fold" in row for row in rows) == 1
    # 1 of 4 epochs in 10 s: 30 s left in the fold; 0.25 of 2 folds in 10 s: 70 s left in all.
    assert rows[1].startswith("folds") and rows[1].endswith("0/2 0:00:10 ETA 1:10")
    assert rows[2].startswith("fold 1 epoch 1/4: loss 1.235, val acc 0.500") and rows[2].endswith(
        "1/4 0:00:10 ETA 0:30")
    assert rows[3].startswith("  steps") and rows[3].endswith("0/2 0:00:00 ETA -")

    for epoch in (2, 3, 4):
        clock.now += 10.0
        progress.on_epoch_end(1, epoch, {"train_loss": 1.0, "val_acc": 0.6})
    progress.on_fold_end(SimpleNamespace(fold=1, val_acc=0.6, epochs=4, seconds=40.0))
    progress.on_cv_end(None)
    rows = screen(terminal.getvalue())
    assert "fold 1 done: val acc 0.600 after 4 epochs in 0:40 (1/2 folds, ETA 0:40)" in rows
    assert rows[-1].startswith("folds") and rows[-1].endswith("1/2 0:00:40 ETA 0:40")  # the fold's bars are gone
    # The bar is gone: the handler writes to its terminal directly again.
    assert handler in logging.getLogger().handlers
    logging.getLogger("esc_sweep.test").warning("after the bar")
    assert terminal.getvalue().endswith("[esc_sweep.test][WARNING] - after the bar\n")


def test_training_progress_prints_plain_lines_with_etas_when_not_a_terminal():
    out, clock = plain_console(), Clock()
    progress = TrainingProgress(True, num_folds=2, out=out, get_time=clock, every=15.0)
    assert not progress.fancy
    progress.on_cv_start({})
    progress.on_fold_start(1, {"epochs": 3, "steps_per_epoch": 2})
    for epoch in (1, 2, 3):
        clock.now += 20.0
        progress.on_epoch_end(1, epoch, {"train_loss": 0.5, "val_acc": 0.25})
    progress.on_fold_end(SimpleNamespace(fold=1, val_acc=0.25, epochs=3, seconds=60.0))
    text = lines(out)
    assert text[0] == "fold 1 epoch 1/3: loss 0.500, val acc 0.250; fold ETA 0:40, all folds ETA 1:40"
    assert text[2] == "fold 1 epoch 3/3: loss 0.500, val acc 0.250; fold ETA 0:00, all folds ETA 1:00"
    assert text[3] == "fold 1 done: val acc 0.250 after 3 epochs in 1:00 (1/2 folds, ETA 1:00)"
    assert not any(BAR in line for line in text)


def test_all_folds_eta_counts_folds_training_at_once():
    """With trainer.parallel_folds, folds share the wall clock: their epochs left are not summed as if in a row."""
    out, clock = plain_console(), Clock()
    progress = TrainingProgress(True, num_folds=2, out=out, get_time=clock, every=0.0)
    progress.on_cv_start({})
    progress.on_fold_start(1, {"epochs": 3, "steps_per_epoch": 2})
    progress.on_fold_start(2, {"epochs": 3, "steps_per_epoch": 2})
    for epoch in (1, 2):
        clock.now += 20.0
        progress.on_epoch_end(1, epoch, {"train_loss": 0.5, "val_acc": 0.25})
        progress.on_epoch_end(2, epoch, {"train_loss": 0.5, "val_acc": 0.25})
    # Each fold's epoch took 20 s of wall time with the other beside it; one epoch is left of each,
    # trained side by side: 20 s, not 40 s.
    assert lines(out)[-1] == "fold 2 epoch 2/3: loss 0.500, val acc 0.250; fold ETA 0:20, all folds ETA 0:20"


def test_plain_lines_are_occasional():
    out, clock = plain_console(), Clock()
    progress = TrainingProgress(False, num_folds=1, out=out, get_time=clock, every=15.0)
    progress.on_fold_start(1, {"epochs": 10, "steps_per_epoch": 1})
    for epoch in range(1, 11):
        clock.now += 4.0
        progress.on_epoch_end(1, epoch, {"train_loss": 0.5, "val_acc": 0.25})
    # 4 s epochs, a line every 15 s at most: epochs 1, 5, 9 and the last.
    assert [line.split(":")[0] for line in lines(out)] == [f"fold 1 epoch {e}/10" for e in (1, 5, 9, 10)]


def test_final_fit_line_has_no_nan_validation():
    out, clock = plain_console(), Clock()
    progress = TrainingProgress(True, num_folds=0, out=out, get_time=clock)
    progress.on_fold_start(0, {"epochs": 1, "steps_per_epoch": 1})
    clock.now += 3.0
    progress.on_epoch_end(0, 1, {"train_loss": 0.25, "val_acc": float("nan")})
    assert lines(out) == ["final fit epoch 1/1: loss 0.250; ETA 0:00"]


def test_phase_bar_has_an_eta_and_keeps_log_lines_whole(terminal_log_handler):
    terminal, _ = terminal_log_handler
    out, clock = terminal_console(terminal), Clock()
    with phase("Decoding audio", 8, out=out, get_time=clock, unit="files") as bar:
        for _ in range(2):
            clock.now += 1.5
            bar.advance()
        logging.getLogger("esc_sweep.data").info("cache written")
        bar.progress.refresh()
        rows = screen(terminal.getvalue())
        # 2 of 8 in 3 s: 9 s left.
        assert rows[0] == "[esc_sweep.data][INFO] - cache written"
        assert rows[1].startswith("Decoding audio") and rows[1].endswith("2/8 0:00:03 ETA 0:09")
        for _ in range(6):
            clock.now += 1.0
            bar.advance()
    assert screen(terminal.getvalue())[-1].endswith("8/8 0:00:09 done in 0:09")


def test_phase_plain_lines_start_progress_and_finish():
    out, clock = plain_console(), Clock()
    with phase("Computing spectrograms", 2000, enabled=False, out=out, get_time=clock, unit="clips",
               every=10.0) as bar:
        for _ in range(8):
            clock.now += 2.5
            bar.advance(250)
    assert lines(out) == [
        "Computing spectrograms: 2000 clips",
        "Computing spectrograms: 1000/2000 (50%), 0:10 elapsed, ETA 0:10",
        "Computing spectrograms: 2000 done in 0:20",
    ]


def test_a_phase_under_a_second_prints_nothing():
    # Nothing before a quick phase's result, or before the one-line error of a phase that fails at once.
    out, clock = plain_console(), Clock()
    with phase("Decoding audio", 3, enabled=False, out=out, get_time=clock, unit="files") as bar:
        clock.now += 0.2
        bar.advance(3)
    assert lines(out) == []


def test_logs_above_progress_leaves_non_terminal_handlers_alone():
    out = terminal_console()
    captured = io.StringIO()  # a log file or a pipe: a bar cannot be broken there
    handler = logging.StreamHandler(captured)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with logs_above_progress(out):
            assert handler in root.handlers
    finally:
        root.removeHandler(handler)


def test_plain_progress_is_thread_safe_in_count():
    import threading

    out, clock = plain_console(), Clock()
    plain = PlainProgress("x", 4000, out, get_time=clock)
    threads = [threading.Thread(target=lambda: [plain.advance() for _ in range(1000)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert plain.completed == 4000
