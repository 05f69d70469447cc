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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from esc_sweep.errors import TrackingError
from esc_sweep.tracking import labels as L
from esc_sweep.tracking.client import PRUNED_TAG, ROLE_TAG, STATUS_TAG, _client
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
    )


def _check_store(uri: str) -> None:
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
    _check_store(uri)
    client = _client(uri)
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
