"""``esc-sweep runs [--tracking-uri URI] [--experiment NAME] [--all]``: finished CV runs, comparable ones ranked together.

One table per comparability key (``esc_sweep.compare_key``: same dataset and
data copy, classes, folds and selection protocol), best mean validation
accuracy first. Runs measured on other data, classes or folds land in another
table, never in one ranking. Runs logged before the key existed are listed
last, unranked.

The store is the training's: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``,
else ``./mlruns/mlflow.db`` of the current folder. ``--experiment`` picks the
MLflow experiment (default ``esc_sweep``); ``--all`` lists every experiment.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from datetime import datetime
from typing import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

RUN_ID_PREFIX = 8


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="esc-sweep runs",
        description="Finished cross-validation runs, grouped so only comparable runs are ranked together "
                    "(same data, classes, folds and selection protocol).",
    )
    parser.add_argument("--tracking-uri", help="MLflow store or server (default: $MLFLOW_TRACKING_URI, "
                                               "else ./mlruns/mlflow.db)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default esc_sweep)")
    parser.add_argument("--all", action="store_true", dest="all_experiments",
                        help="runs of every experiment in the store")
    return parser.parse_args(list(argv))


def _gap(value: float) -> str:
    return f"{value:+.1%}" if math.isfinite(value) else "-"


def _accuracy(mean: float, interval: tuple[float, float]) -> str:
    """``76.8% [72.1, 81.5]``: the mean and its 95 % interval (in %); the mean alone for one fold."""
    if not math.isfinite(mean):
        return "-"
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.1%}"
    return f"{mean:.1%} [{100 * low:.1f}, {100 * high:.1f}]"


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M") if ms else "-"


def _fold_count(folds: str) -> int:
    return len([f for f in folds.split(",") if f.strip()])


def _folds(folds: str) -> str:
    count = _fold_count(folds)
    return f"{folds} ({count})" if count > 1 else folds


def group_table(group, show_experiment: bool = False) -> Table:
    """One rich table: the runs of one comparability group."""
    from esc_sweep.tracking.runs_table import differing_overrides  # deferred: the MLflow side (~2 s), as in main

    first = group.runs[0]
    if group.ranked:
        title = (f"[bold]{escape(first.dataset)}[/] · {escape(first.num_classes)} classes · folds "
                 f"{escape(first.folds)} · selection {escape(first.selection)} · data {escape(first.fingerprint)} "
                 f"· key {escape(group.key)}")
    else:
        title = "[bold]older runs without a comparability key[/]: not ranked (their data, classes or selection may differ)"
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("model")
    table.add_column("features")
    if show_experiment:
        table.add_column("experiment")
    table.add_column("recipe")
    # A ranked group shares its folds, classes and selection (the heading says them): the width goes to
    # what differs between its runs instead.
    shared = group.ranked
    if not shared:
        table.add_column("folds")
        table.add_column("classes", justify="right")
        table.add_column("selection")
    table.add_column("epochs", justify="right")
    table.add_column("val acc (mean [95 % CI])", justify="right", no_wrap=True)
    table.add_column("gap", justify="right")
    table.add_column("date", no_wrap=True)
    table.add_column("run", no_wrap=True)
    # What tells the runs of this group apart beyond the columns above: their commands' differences.
    differs = differing_overrides(group.runs)
    if any(differs.values()):
        table.add_column("differs (overrides)", overflow="fold", min_width=24)
    rank = 0
    for run in group.runs:
        rank += run.ranked  # pruned runs and runs without a mean are listed unranked
        cells = [str(rank) if run.ranked else "-", escape(run.model), escape(run.features)]
        if show_experiment:
            cells.append(escape(run.experiment))
        cells.append(escape(run.recipe))
        if not shared:
            cells += [escape(_folds(run.folds)), escape(run.num_classes), escape(run.selection)]
        cells += [escape(run.epochs),
                  # One fold has no interval: "± 0.0%" would claim a certainty nobody measured.
                  "pruned" if run.pruned else _accuracy(run.val_acc_mean, run.interval()),
                  "-" if run.pruned else _gap(run.gap_mean), _date(run.start_time),
                  run.run_id[:RUN_ID_PREFIX]]
        if any(differs.values()):
            cells.append(escape(differs.get(run.run_id) or "(defaults)"))
        table.add_row(*cells)
    return table


def main(argv: Sequence[str]) -> None:
    # deferred: esc_sweep.tracking.runs_table imports mlflow (~8 s) — `esc-sweep runs --help` must not pay for it
    from esc_sweep.tracking.runs_table import DEFAULT_EXPERIMENT, comparable_groups, finished_cv_runs

    args = parse_args(argv)
    runs = finished_cv_runs(args.tracking_uri, args.experiment or DEFAULT_EXPERIMENT, args.all_experiments)
    # Results go to stdout; wide enough for every column when it is a file or a pipe.
    out = Console(width=None if sys.stdout.isatty() else max(shutil.get_terminal_size((160, 24)).columns, 160))
    where = "every experiment" if args.all_experiments else f"experiment {args.experiment or DEFAULT_EXPERIMENT}"
    if not runs:
        out.print(f"no finished cross-validation runs in {escape(where)}")
        return
    groups = comparable_groups(runs)
    ranked = sum(1 for g in groups if g.ranked)
    pruned = sum(run.pruned for run in runs)
    out.print(f"{len(runs)} finished cross-validation run(s) in {escape(where)}"
              f"{f' ({pruned} pruned sweep trials, listed but not ranked)' if pruned else ''}, "
              f"{ranked} comparable group(s); runs are ranked only within their group")
    for group in groups:
        out.print()
        out.print(group_table(group, show_experiment=args.all_experiments))
