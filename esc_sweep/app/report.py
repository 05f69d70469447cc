"""Console tables and results.json for a finished cross-validation."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from esc_sweep.errors import EscSweepError
from esc_sweep.paths import write_text_atomically
from esc_sweep.training.results import SELECTION_NOTES, CVResult


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _caption(cv: CVResult) -> str:
    """The interval of the mean accuracy, the selection protocol and the wall time, under the table."""
    s = cv.summary()
    lines = []
    low, high = s["cv_val_acc_ci95_low"], s["cv_val_acc_ci95_high"]
    if math.isfinite(low):
        unit = "folds (each averaged over its repeats)" if cv.repeats > 1 else "folds"
        lines.append(f"val acc {_pct(s['cv_val_acc_mean'])} %, 95 % interval {_pct(low)}-{_pct(high)} "
                     f"(Student t over {len(cv.fold_means())} {unit})")
    if cv.repeats > 1:
        lines.append(f"{cv.repeats} repeats (rN fK: repeat N, fold K): seed-to-seed std of the mean "
                     f"{_pct(s['cv_val_acc_seed_std'])} points")
    lines.append(f"selection: {cv.validation} ({SELECTION_NOTES.get(cv.validation, '')})")
    lines.append(f"wall time {cv.seconds:.0f} s")
    return "\n".join(lines)


def results_table(cv: CVResult, title: str = "Cross-validation (accuracies in %)") -> Table:
    inner = cv.validation == "inner"
    table = Table(title=title, caption=_caption(cv))
    columns = ["fold", "val acc", "train acc", "gap", "val F1", "val loss", "epochs", "seconds"]
    if inner:
        columns.insert(2, "inner acc")
    # Test-time crops (trainer.tta_crops): the multi-crop accuracy beside the single view.
    tta = all(getattr(f, "val_acc_tta", None) is not None for f in cv.folds)
    if tta:
        columns.insert(2, "val acc TTA")
    # MAP@3 (FSDKaggle2018's metric) beside accuracy and F1: for a holdout or when it is the objective.
    map3 = (cv.protocol == "holdout" or cv.objective_metric == "map3") and all(
        getattr(f, "val_map3", None) is not None for f in cv.folds)
    if map3:
        columns.insert(columns.index("val F1") + 1, "val MAP@3")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)

    def row(*cells, inner_cell="", tta_cell="", map3_cell="", **style):
        cells = list(cells)
        if map3:
            cells.insert(5, map3_cell)
        if inner:
            cells.insert(2, inner_cell)
        if tta:
            cells.insert(2, tta_cell)
        table.add_row(*cells, **style)

    repeats = cv.repeats > 1
    for f in cv.folds:
        row(f"r{f.repeat} f{f.fold}" if repeats else str(f.fold), _pct(f.val_acc), _pct(f.train_acc), f"{100 * f.gap:+.1f}", f"{f.val_f1:.3f}",
            f"{f.val_loss:.3f}", str(f.epochs), f"{f.seconds:.0f}",
            inner_cell=_pct(f.inner_acc) if f.inner_acc is not None else "-",
            tta_cell=_pct(f.val_acc_tta) if tta else "", map3_cell=f"{f.val_map3:.3f}" if map3 else "")
    s = cv.summary()
    table.add_section()
    row("mean", _pct(s["cv_val_acc_mean"]), _pct(s["cv_train_acc_mean"]), f"{100 * s['cv_gap_mean']:+.1f}",
        f"{s['cv_val_f1_mean']:.3f}", f"{s['cv_val_loss_mean']:.3f}", "",
        f"{statistics.fmean(f.seconds for f in cv.folds):.0f}", style="bold",  # per fold, like the rows above
        inner_cell=_pct(s["cv_inner_acc_mean"]) if "cv_inner_acc_mean" in s else "",
        tta_cell=_pct(s["cv_val_acc_tta_mean"]) if "cv_val_acc_tta_mean" in s else "",
        map3_cell=f"{s['cv_val_map3_mean']:.3f}" if "cv_val_map3_mean" in s else "")
    if len(cv.folds) < 2:  # one fold has no spread to show
        return table
    row("± std", _pct(s["cv_val_acc_std"]), _pct(s["cv_train_acc_std"]), _pct(s["cv_gap_std"]),
        f"{s['cv_val_f1_std']:.3f}", f"{s['cv_val_loss_std']:.3f}", "", "",
        inner_cell=_pct(s["cv_inner_acc_std"]) if "cv_inner_acc_std" in s else "",
        tta_cell=_pct(s["cv_val_acc_tta_std"]) if "cv_val_acc_tta_std" in s else "",
        map3_cell=f"{s['cv_val_map3_std']:.3f}" if "cv_val_map3_std" in s else "")
    return table


def print_results(cv: CVResult, console: Console | None = None) -> None:
    (console or Console()).print(results_table(cv))


def write_results(cv: CVResult, directory: Path, extra: dict | None = None) -> Path:
    """results.json, written atomically: a full disk or a kill never leaves a partial file."""
    path = Path(directory) / "results.json"
    try:
        write_text_atomically(path, json.dumps({**cv.to_dict(), **(extra or {})}, indent=2))
    except OSError as err:
        kept = f"; the finished folds are kept in {cv.checkpoint_dir}" if cv.checkpoint_dir else ""
        raise EscSweepError(f"cannot write {path}: {err.strerror or err}{kept}: fix that and run the same "
                            f"command again (the folds are not trained again)") from None
    return path
