"""``esc-sweep compare RUN RUN [RUN ...] [--rope POINTS] [--metric NAME] [--format text|json]``: is one run really better?

Each RUN is a run folder (the one holding ``results.json``; the path printed at the
end of a training) or an MLflow run id (or a unique prefix, as ``esc-sweep runs``
prints it). Runs are compared pairwise, paired fold by fold (and repeat by repeat
with ``trainer.repeats``), only when they were measured alike: the same data copy,
classes, folds and selection protocol. Otherwise the command names what differs and
exits 2.

For each pair (B against A, A being the earlier on the command line) it reports the
mean difference B - A in percentage points with its 95 % interval and p-value from the
corrected resampled t-test (Nadeau & Bengio 2003), and the Bayesian correlated t-test
(Benavoli et al. 2017) against a region of practical equivalence (``--rope``, default
1 point): P(A better), P(equivalent), P(B better). docs/compare.md explains how to read
them and why the correction matters.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.console import Console
from rich.markup import escape

from esc_sweep.errors import EscSweepError
from esc_sweep.stats import compare_paired, mean_interval
from esc_sweep.tracking import labels as L

# What must be equal for two runs' fold values to be paired (labels.compare_key hashes the same).
COMPARABILITY = ("dataset", "fingerprint", "classes", "folds", "selection")
# A verdict needs this much posterior probability.
DECISIVE = 0.95


class CompareError(EscSweepError):
    """Runs that cannot be compared (other data, missing results)."""


@dataclass
class RunValues:
    """One run's per-(repeat, fold) values and what they were measured on."""

    ref: str  # as the user named it
    label: str  # short: folder name or run id prefix
    where: str  # the folder or "MLflow run <id>"
    measured_on: dict[str, Any]  # COMPARABILITY keys
    values: dict[tuple[int, int], float]  # (repeat, fold) -> metric
    dataset_folds: int
    overrides: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return sum(self.values.values()) / len(self.values)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="esc-sweep compare",
        description="Paired, fold-by-fold comparison of finished CV runs: mean difference with its 95 %% interval "
                    "and p-value (corrected resampled t-test) and the Bayesian correlated t-test with a region of "
                    "practical equivalence.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="a run folder (holding results.json) or an MLflow run id (or a unique prefix)")
    parser.add_argument("--rope", type=float, default=1.0,
                        help="region of practical equivalence, in percentage points (default 1.0)")
    parser.add_argument("--metric", default="val_acc",
                        choices=("val_acc", "val_f1", "val_acc_tta", "val_map3", "inner_acc", "inner_map3"),
                        help="the per-fold value compared (default val_acc: test-fold accuracy; val_map3: MAP@3, "
                             "FSDKaggle2018's metric)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--tracking-uri", help="MLflow store for run ids (default: $MLFLOW_TRACKING_URI, "
                                               "else ./mlruns/mlflow.db)")
    args = parser.parse_args(list(argv))
    if len(args.runs) < 2:
        parser.error("compare needs at least two runs")
    if not (math.isfinite(args.rope) and args.rope >= 0):
        parser.error(f"--rope {args.rope}: must be a number >= 0 (percentage points)")
    return args


# ---------------------------------------------------------------------------- reading runs

def _results_file(ref: str) -> Optional[Path]:
    path = Path(ref)
    if path.is_file() and path.name == "results.json":
        return path
    if path.is_dir():
        if (path / "results.json").is_file():
            return path / "results.json"
        raise CompareError(f"{ref}: this folder holds no results.json (not a finished run folder)")
    return None


def _from_results(ref: str, label: str, where: str, results: dict[str, Any], tags: dict[str, str],
                  metric: str, overrides: list[str]) -> RunValues:
    data = results.get("data") or {}
    folds = results.get("folds") or []
    if not folds:
        raise CompareError(f"{where}: results.json lists no folds")
    values: dict[tuple[int, int], float] = {}
    for fold in folds:
        value = fold.get(metric)
        if value is None:
            raise CompareError(f"{where}: fold {fold.get('fold')} has no {metric} (pick another --metric)")
        values[(int(fold.get("repeat", 0)), int(fold["fold"]))] = float(value)
    dataset = data.get("dataset") or tags.get(L.DATASET_TAG)
    fingerprint = data.get("fingerprint") or tags.get(L.FINGERPRINT_TAG)
    if not dataset or not fingerprint:
        raise CompareError(f"{where}: its results do not say which data they were measured on (a run from before "
                           "esc_sweep recorded it); run it again to compare it")
    measured_on = {
        "dataset": dataset,
        "fingerprint": fingerprint,
        "classes": list(results.get("class_names") or []),
        "folds": sorted({fold for _, fold in values}),
        "selection": results.get("validation") or tags.get(L.SELECTION_TAG, "none"),
    }
    dataset_folds = int(data.get("dataset_folds") or 0) or len(measured_on["folds"])
    return RunValues(ref, label, where, measured_on, values, dataset_folds, overrides)


def _folder_overrides(results_file: Path) -> list[str]:
    overrides = results_file.parent / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return []
    return [line[2:].strip() for line in overrides.read_text(errors="replace").splitlines() if line.startswith("- ")]


def load_run(ref: str, metric: str = "val_acc", tracking_uri: Optional[str] = None) -> RunValues:
    """A run folder or an MLflow run id, as values per (repeat, fold) and what they were measured on."""
    results_file = _results_file(ref)
    if results_file is not None:
        try:
            results = json.loads(results_file.read_text())
        except (OSError, ValueError) as err:
            raise CompareError(f"{results_file}: unreadable ({err})") from None
        return _from_results(ref, results_file.parent.name, str(results_file.parent), results, {}, metric,
                             _folder_overrides(results_file))
    if "/" in ref or ref.startswith("."):
        raise CompareError(f"{ref}: no such run folder")
    from esc_sweep.tracking.run_results import cv_run_results  # deferred: MLflow (~2 s), only for run ids

    run_id, results, tags = cv_run_results(ref, tracking_uri)
    overrides = [o for o in (tags.get("esc_sweep.overrides") or "").split(" ") if o]
    return _from_results(ref, run_id[:8], f"MLflow run {run_id}", results, tags, metric, overrides)


# ---------------------------------------------------------------------------- comparing

def differences(a: RunValues, b: RunValues) -> list[str]:
    """What makes two runs incomparable, in words; empty when they may be paired."""
    out = []
    for key in COMPARABILITY:
        x, y = a.measured_on[key], b.measured_on[key]
        if x == y:
            continue
        if key == "classes":
            out.append(f"classes ({len(x)} vs {len(y)}" + (", other names)" if len(x) == len(y) else ")"))
        elif key == "folds":
            out.append(f"folds ({','.join(map(str, x))} vs {','.join(map(str, y))})")
        elif key == "fingerprint":
            out.append(f"data copy (fingerprint {x} vs {y})")
        else:
            out.append(f"{key} ({x} vs {y})")
    return out


def check_comparable(a: RunValues, b: RunValues) -> None:
    """Raise CompareError, naming what differs, unless the two runs were measured alike."""
    problems = differences(a, b)
    if problems:
        raise CompareError(f"{a.label} and {b.label} were not measured alike: {'; '.join(problems)}. "
                           "Only runs on the same data, classes, folds and selection protocol can be compared")


def compare_two(a: RunValues, b: RunValues, rope_points: float = 1.0) -> dict[str, Any]:
    """B against A, paired by (repeat, fold): the numbers ``esc-sweep compare --format json`` prints per pair."""
    check_comparable(a, b)
    pairs = sorted(set(a.values) & set(b.values))
    if len(pairs) < 2:
        raise CompareError(f"{a.label} and {b.label} share {len(pairs)} (repeat, fold) pair(s); a comparison needs 2")
    repeats = len({r for r, _ in pairs})
    x = [a.values[p] for p in pairs]
    y = [b.values[p] for p in pairs]
    result = compare_paired(x, y, folds=max(a.dataset_folds, 2), repeats=repeats, rope=rope_points / 100)
    points = 100.0
    verdict = _verdict(result.prob_a_better, result.prob_equivalent, result.prob_b_better, rope_points)
    return {
        "a": _describe(a, pairs),
        "b": _describe(b, pairs),
        "metric_unit": "percentage points",
        "difference": result.mean_difference * points,  # B - A
        "ci95": [result.ci95[0] * points, result.ci95[1] * points],
        "p_value": result.p_value,
        "t_statistic": result.t_statistic,
        "df": result.df,
        "prob_a_better": result.prob_a_better,
        "prob_equivalent": result.prob_equivalent,
        "prob_b_better": result.prob_b_better,
        "rope": rope_points,
        "n_pairs": result.n_pairs,
        "repeats": repeats,
        "dataset_folds": a.dataset_folds,
        "test_train_ratio": result.test_train_ratio,
        "naive_ci95": [result.naive_ci95[0] * points, result.naive_ci95[1] * points],
        "unpaired_left_out": sorted(set(a.values) ^ set(b.values)),
        "verdict": verdict,
    }


def _describe(run: RunValues, pairs: list[tuple[int, int]]) -> dict[str, Any]:
    values = [run.values[p] * 100 for p in pairs]
    low, high = mean_interval(values)
    return {"run": run.ref, "where": run.where, "overrides": run.overrides, "mean": sum(values) / len(values),
            "ci95": [low, high], "per_pair": {f"r{r}f{f}": run.values[(r, f)] * 100 for r, f in pairs}}


def _verdict(left: float, equivalent: float, right: float, rope: float) -> str:
    if right >= DECISIVE:
        return "B is better"
    if left >= DECISIVE:
        return "A is better"
    if equivalent >= DECISIVE:
        return f"practically equivalent (within ±{rope:g} points)"
    return "undecided: these folds cannot tell them apart"


def compare_runs(runs: Sequence[RunValues], rope_points: float = 1.0) -> list[dict[str, Any]]:
    """Every pair (B later on the command line than A); refuses incomparable runs before computing any."""
    for a, b in combinations(runs, 2):
        check_comparable(a, b)
    return [compare_two(a, b, rope_points) for a, b in combinations(runs, 2)]


# ---------------------------------------------------------------------------- printing

def _pp(value: float) -> str:
    return f"{value:+.1f}"


def print_text(runs: Sequence[RunValues], pairs: list[dict[str, Any]], metric: str, console: Console) -> None:
    first = runs[0]
    console.print(f"[bold]{metric}[/], paired by fold on {first.measured_on['dataset']} "
                  f"({len(first.measured_on['classes'])} classes, folds {','.join(map(str, first.measured_on['folds']))}, "
                  f"selection {first.measured_on['selection']}); percentages and percentage points")
    for run in runs:
        low, high = mean_interval([v * 100 for v in run.values.values()])
        interval = f", 95 % CI {low:.1f}-{high:.1f}" if math.isfinite(low) else ""
        console.print(f"  {escape(run.label)}: {run.mean * 100:.1f} %{interval}   {escape(run.where)}"
                      + (f"   [dim]{escape(' '.join(run.overrides))}[/]" if run.overrides else ""))
    for pair in pairs:
        a, b = pair["a"]["where"], pair["b"]["where"]
        label_a = next(r.label for r in runs if r.where == a)
        label_b = next(r.label for r in runs if r.where == b)
        console.print()
        console.print(f"[bold]{escape(label_b)} - {escape(label_a)}[/] (B - A): {_pp(pair['difference'])} points, "
                      f"95 % CI {_pp(pair['ci95'][0])} to {_pp(pair['ci95'][1])}, p = {pair['p_value']:.3f} "
                      f"(corrected resampled t-test, {pair['n_pairs']} pairs)")
        console.print(f"  P(A better) {pair['prob_a_better']:.2f} · P(equivalent, ±{pair['rope']:g} points) "
                      f"{pair['prob_equivalent']:.2f} · P(B better) {pair['prob_b_better']:.2f}   "
                      f"(Bayesian correlated t-test)")
        console.print(f"  verdict: [bold]{pair['verdict']}[/]   "
                      f"[dim](an uncorrected paired t-test would claim {_pp(pair['naive_ci95'][0])} to "
                      f"{_pp(pair['naive_ci95'][1])}: too narrow, the folds share training clips)[/]")
        if pair["unpaired_left_out"]:
            console.print(f"  [dim]left out, present in one run only (repeat, fold): {pair['unpaired_left_out']}[/]")


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    runs = [load_run(ref, args.metric, args.tracking_uri) for ref in args.runs]
    pairs = compare_runs(runs, args.rope)
    if args.format == "json":
        json.dump({"metric": args.metric, "comparisons": pairs}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print_text(runs, pairs, args.metric, Console(highlight=False))
