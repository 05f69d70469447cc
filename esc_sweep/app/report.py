"""Console tables and results.json for a finished cross-validation."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from esc_sweep.errors import EscSweepError
from esc_sweep.training.results import CVResult


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def results_table(cv: CVResult, title: str = "Cross-validation (accuracies in %)") -> Table:
    table = Table(title=title)
    for column in ("fold", "val acc", "train acc", "gap", "val F1", "val loss", "epochs", "seconds"):
        table.add_column(column, justify="right", no_wrap=True)
    for f in cv.folds:
        table.add_row(
            str(f.fold), _pct(f.val_acc), _pct(f.train_acc), f"{100 * f.gap:+.1f}", f"{f.val_f1:.3f}",
            f"{f.val_loss:.3f}", str(f.epochs), f"{f.seconds:.0f}",
        )
    s = cv.summary()
    table.add_section()
    table.add_row("mean", _pct(s["cv_val_acc_mean"]), _pct(s["cv_train_acc_mean"]), f"{100 * s['cv_gap_mean']:+.1f}",
                  f"{s['cv_val_f1_mean']:.3f}", f"{s['cv_val_loss_mean']:.3f}", "", f"{cv.seconds:.0f}", style="bold")
    table.add_row("± std", _pct(s["cv_val_acc_std"]), _pct(s["cv_train_acc_std"]), _pct(s["cv_gap_std"]),
                  f"{s['cv_val_f1_std']:.3f}", f"{s['cv_val_loss_std']:.3f}", "", "")
    return table


def print_results(cv: CVResult, console: Console | None = None) -> None:
    (console or Console()).print(results_table(cv))


def write_results(cv: CVResult, directory: Path, extra: dict | None = None) -> Path:
    """results.json, written atomically: a full disk or a kill never leaves a partial file."""
    path = Path(directory) / "results.json"
    tmp = path.with_name(f".results.json.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({**cv.to_dict(), **(extra or {})}, indent=2))
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        kept = f"; the finished folds are kept in {cv.checkpoint_dir}" if cv.checkpoint_dir else ""
        raise EscSweepError(f"cannot write {path}: {err.strerror or err}{kept}: fix that and run the same "
                            f"command again (the folds are not trained again)") from None
    return path
