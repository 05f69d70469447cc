"""Finished CV runs read back from MLflow, grouped so that only comparable runs are ranked together.

``esc-sweep runs`` prints them (``esc_sweep.app.runs``); from Python::

    from esc_sweep.tracking.runs_table import finished_cv_runs, comparable_groups
    for group in comparable_groups(finished_cv_runs("sqlite:///mlruns/mlflow.db")):
        print(group.key, [run.model for run in group.runs])

Runs are comparable when their ``esc_sweep.compare_key`` tags are equal (see
``esc_sweep.tracking.labels``). Runs logged before that tag existed have none:
they form one group of their own that is listed but not ranked.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from esc_sweep.errors import TrackingError
from esc_sweep.tracking import labels as L
from esc_sweep.tracking.client import PRUNED_TAG, ROLE_TAG, STATUS_TAG, mlflow_client
from esc_sweep.tracking.uri import resolve_tracking_uri

DEFAULT_EXPERIMENT = "esc_sweep"
_PAGE = 1000


@dataclass
class CVRun:
    run_id: str
    experiment: str
    name: str
    model: str
    features: str
    dataset: str
    folds: str  # "1,2,3,4,5"
    num_classes: str
    classes: str
    selection: str
    recipe: str
    compare_key: Optional[str]  # None: logged before comparability tags existed
    fingerprint: str
    val_acc_mean: float
    val_acc_std: float
    gap_mean: float
    start_time: int  # ms since the epoch
    pruned: bool = False  # a sweep trial stopped early by its pruner: listed, never ranked
    ci95_low: float = float("nan")  # the 95 % interval of the mean accuracy, as logged (NaN: not logged)
    ci95_high: float = float("nan")
    overrides: str = ""  # the command line's overrides (tag esc_sweep.overrides)
    epochs: str = "?"

    @property
    def num_folds(self) -> int:
        return len([f for f in self.folds.split(",") if f.strip().isdigit()])

    def interval(self) -> tuple[float, float]:
        """The 95 % interval of the mean accuracy: as logged, else Student t from the mean, std and fold count.

        Runs logged before the interval existed have only ``cv_val_acc_std`` (the folds' sample
        standard deviation); one fold has no interval (NaNs).
        """
        if math.isfinite(self.ci95_low) and math.isfinite(self.ci95_high):
            return self.ci95_low, self.ci95_high
        n = self.num_folds
        if n < 2 or not (math.isfinite(self.val_acc_mean) and math.isfinite(self.val_acc_std)):
            return float("nan"), float("nan")
        from scipy import stats  # deferred: scipy (~0.5 s), only for runs without a logged interval

        half = float(stats.t.ppf(0.975, n - 1)) * self.val_acc_std / math.sqrt(n)
        return self.val_acc_mean - half, self.val_acc_mean + half

    @property
    def ranked(self) -> bool:
        return self.compare_key is not None and math.isfinite(self.val_acc_mean) and not self.pruned


@dataclass
class RunGroup:
    key: Optional[str]  # the shared compare key; None for runs without one
    runs: list[CVRun] = field(default_factory=list)  # best mean validation accuracy first

    @property
    def ranked(self) -> bool:
        return self.key is not None

    @property
    def latest(self) -> int:
        return max((r.start_time for r in self.runs), default=0)


def _folds_from_param(value: Optional[str]) -> str:
    """``[1, 2, 3]`` (the trainer.folds param of older runs) as ``1,2,3``."""
    if not value:
        return "?"
    digits = [part.strip() for part in value.strip("[]").split(",") if part.strip().isdigit()]
    return ",".join(digits) or "?"


def _metric(metrics: dict[str, float], key: str) -> float:
    value = metrics.get(key)
    return float(value) if value is not None else float("nan")


def _row(run: Any, experiment: str) -> CVRun:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    return CVRun(
        run_id=run.info.run_id,
        experiment=experiment,
        name=run.info.run_name or "",
        model=tags.get(L.MODEL_TAG) or params.get("model.name", "?"),
        features=tags.get(L.FEATURES_TAG) or params.get("features.kind", "?"),
        dataset=tags.get(L.DATASET_TAG) or params.get("dataset.name", "?"),
        folds=tags.get(L.FOLDS_TAG) or _folds_from_param(params.get("trainer.folds")),
        num_classes=tags.get(L.NUM_CLASSES_TAG) or params.get("num_classes", "?"),
        classes=tags.get(L.CLASSES_TAG, ""),
        selection=tags.get(L.SELECTION_TAG, "?"),
        recipe=tags.get(L.RECIPE_TAG, "?"),
        compare_key=tags.get(L.COMPARE_KEY_TAG),
        fingerprint=tags.get(L.FINGERPRINT_TAG) or params.get("dataset_fingerprint", "?"),
        val_acc_mean=_metric(metrics, "cv_val_acc_mean"),
        val_acc_std=_metric(metrics, "cv_val_acc_std"),
        gap_mean=_metric(metrics, "cv_gap_mean"),
        start_time=int(run.info.start_time or 0),
        pruned=tags.get(STATUS_TAG) == "pruned" or tags.get(PRUNED_TAG) == "true",
        ci95_low=_metric(metrics, "cv_val_acc_ci95_low"),
        ci95_high=_metric(metrics, "cv_val_acc_ci95_high"),
        overrides=tags.get("esc_sweep.overrides", ""),
        epochs=tags.get(L.EPOCHS_TAG) or params.get("trainer.epochs", "?"),
    )


def require_store(uri: str) -> None:
    """A SQLite store must exist already: listing runs never creates an empty one."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):]).expanduser()
        if not path.is_file():
            raise TrackingError(
                f"no MLflow records at {path}: train something first (python -m esc_sweep ...), run this "
                "from the folder you trained in, or point --tracking-uri / MLFLOW_TRACKING_URI at the store"
            )


def finished_cv_runs(tracking_uri: Optional[str] = None, experiment: Optional[str] = DEFAULT_EXPERIMENT,
                     all_experiments: bool = False) -> list[CVRun]:
    """Every FINISHED CV run (tag ``esc_sweep.role=cv``) of ``experiment``, or of every experiment.

    Pruned sweep trials end FINISHED too (with ``esc_sweep.status=pruned``): they are
    returned with ``pruned=True`` and never ranked.

    ``tracking_uri`` defaults to the training's store (``tracking.uri`` aside:
    ``$MLFLOW_TRACKING_URI``, else ``./mlruns/mlflow.db``).
    """
    uri = tracking_uri or resolve_tracking_uri()
    require_store(uri)
    client = mlflow_client(uri)
    if all_experiments:
        experiments = list(client.search_experiments())
    else:
        name = experiment or DEFAULT_EXPERIMENT
        found = client.get_experiment_by_name(name)
        if found is None or found.lifecycle_stage != "active":
            names = sorted(e.name for e in client.search_experiments())
            raise TrackingError(f"no MLflow experiment {name!r} at {uri}; there are: {', '.join(names) or 'none'} "
                                "(pick one with --experiment NAME, or --all)")
        experiments = [found]
    rows: list[CVRun] = []
    names = {e.experiment_id: e.name for e in experiments}
    if not names:
        return rows
    query = f"tags.`{ROLE_TAG}` = 'cv' and attributes.status = 'FINISHED'"
    token = None
    while True:
        page = client.search_runs(list(names), filter_string=query, max_results=_PAGE, page_token=token)
        rows += [_row(run, names.get(run.info.experiment_id, "?")) for run in page]
        token = page.token
        if not token:
            return rows


def comparable_groups(runs: Iterable[CVRun]) -> list[RunGroup]:
    """Runs grouped by comparability key, best first within a group.

    Groups with a key come first, the most recently active first; runs
    without a key (older runs) last, newest first and unranked. Within a group
    the ranked runs come first, best first; pruned runs and runs without a mean
    accuracy follow, newest first.
    """
    by_key: dict[Optional[str], RunGroup] = {}
    for run in runs:
        by_key.setdefault(run.compare_key, RunGroup(run.compare_key)).runs.append(run)
    for group in by_key.values():
        if group.ranked:
            group.runs.sort(key=lambda r: (not r.ranked, -(r.val_acc_mean if r.ranked else 0.0), -r.start_time))
        else:
            group.runs.sort(key=lambda r: -r.start_time)
    keyed = sorted((g for g in by_key.values() if g.ranked), key=lambda g: -g.latest)
    return keyed + ([by_key[None]] if None in by_key else [])


def differing_overrides(runs: Iterable[CVRun]) -> dict[str, str]:
    """Per run id, the command-line overrides it does not share with every other run of ``runs``.

    Runs of one comparability group share data, classes, folds and selection; what set them
    apart is in their commands (``optimizer.lr=0.01`` against ``optimizer.lr=0.003``). A key
    given by some runs and not others counts as differing too (the others ran its default).
    """
    runs = list(runs)
    parsed = {run.run_id: _override_pairs(run.overrides) for run in runs}
    if not parsed:
        return {}
    keys = set().union(*(dict(p) for p in parsed.values()))
    common = {k for k in keys if len({dict(p).get(k) for p in parsed.values()}) == 1}
    return {run_id: " ".join(f"{k}={v}" if v is not None else k for k, v in pairs if k not in common)
            for run_id, pairs in parsed.items()}


def _override_pairs(overrides: str) -> list[tuple[str, Optional[str]]]:
    """``a=1 +b=[1, 2]`` as [("a", "1"), ("+b", "[1, 2]")]: Hydra's task overrides, as the tracker joined them."""
    try:
        tokens = shlex.split(overrides)
    except ValueError:  # an unbalanced quote in a hand-written tag
        tokens = overrides.split()
    pairs: list[tuple[str, Optional[str]]] = []
    for token in tokens:
        key, sep, value = token.partition("=")
        if sep or not pairs or pairs[-1][1] is None:
            pairs.append((key, value if sep else None))
        else:  # the tracker joins with spaces: "trainer.folds=[1, 2]" arrives as two tokens
            pairs[-1] = (pairs[-1][0], f"{pairs[-1][1]} {token}")
    return pairs
