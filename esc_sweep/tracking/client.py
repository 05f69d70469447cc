"""MLflow client set-up shared by the CV runs, the study runs and artifact logging.

Everything goes through ``MlflowClient`` with explicit run ids, never the
fluent active-run stack: several runs are open at once (CV and fold run), and
sweeps run many trials in one process.
"""

from __future__ import annotations

import getpass
import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from esc_sweep.errors import TrackingError
from esc_sweep.tracking.uri import check_server, default_root as _default_root, is_server

# Tags that give runs their place in the layout.
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (the UI nests runs by it)
ROLE_TAG = "esc_sweep.role"  # study | cv | fold
STUDY_TAG = "esc_sweep.study"
OBJECTIVE_TAG = "esc_sweep.objective"  # a study run: what its trials' values are (e.g. mean_inner_acc)
TRIAL_TAG = "esc_sweep.trial"
FOLD_TAG = "fold"
REPEAT_TAG = "esc_sweep.repeat"  # which repeat of the CV a fold run belongs to (trainer.repeats > 1)
ERROR_TAG = "esc_sweep.error"
# How a CV run ended: finished | pruned | failed | interrupted. A pruned sweep trial's runs end
# FINISHED (MLflow has no PRUNED status; KILLED looks like a failure) with esc_sweep.status=pruned,
# esc_sweep.pruned=true and " · pruned" at the end of the run name.
STATUS_TAG = "esc_sweep.status"
PRUNED_TAG = "esc_sweep.pruned"
PRUNED_SUFFIX = " · pruned"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
# Key in the fold-checkpoint state under which the CV run id survives an interruption.
STATE_KEY = "mlflow_parent_run_id"
# MLflow 3 opens an experiment on its GenAI overview unless this tag says it holds model training
# (values from MLflow's UI: genai_development | custom_model_development).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value
_MAX_BATCH = 100  # MLflow's limit on params/tags per log_batch call


def default_artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside its database; servers choose their own."""
    root = _default_root()
    if uri == f"sqlite:///{root / 'mlflow.db'}":
        return (root / "artifacts").as_uri()
    if uri.startswith("sqlite:///"):
        # Otherwise MLflow would write them into ./mlruns of whatever folder the run starts in.
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()
    return None


def _quiet_mlflow_logging() -> None:
    # Creating a SQLite store runs ~50 alembic migrations, each logged at INFO.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store"):
        logging.getLogger(name).setLevel(logging.WARNING)


def mlflow_client(uri: str) -> MlflowClient:
    _quiet_mlflow_logging()
    if is_server(uri):
        check_server(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        return MlflowClient(tracking_uri=uri)
    except MlflowException as err:
        raise TrackingError(f"cannot use MLflow tracking URI {uri!r}: {err.message}") from None


# The runs table's landing view, saved on the experiment as a shared view state (MLflow's "Share" of a
# view stores the same tag): opened with ``?viewStateShareKey=esc_sweep`` (the link each run logs, see
# ``runs_table_url``), the table is sorted by mean accuracy and shows it with its 95 % interval and what
# tells runs apart: the dataset with its classes, folds, epochs, selection, model.
RUNS_VIEW_KEY = "esc_sweep"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"
RUNS_VIEW_COLUMNS = (
    "metrics.`cv_val_acc_mean`", "metrics.`cv_val_acc_ci95_low`", "metrics.`cv_val_acc_ci95_high`",
    "tags.`model`", "tags.`esc_sweep.dataset_label`", "tags.`esc_sweep.num_classes`", "tags.`esc_sweep.folds`",
    "tags.`esc_sweep.epochs`", "tags.`esc_sweep.selection`", "tags.`esc_sweep.recipe`", "attributes.`Dataset`",
)


def runs_view_state() -> str:
    """The JSON of the landing view: search facets and UI state, as MLflow's UI reads a shared view."""
    return json.dumps({
        "orderByKey": "metrics.`cv_val_acc_mean`",
        "orderByAsc": False,
        # CV runs only: their fold runs (no mean accuracy) would otherwise be listed below them, one row each.
        "searchFilter": f"tags.`{ROLE_TAG}` = 'cv'",
        "lifecycleFilter": "Active",
        "selectedColumns": list(RUNS_VIEW_COLUMNS),
        "columnWidths": {},
        "runsHiddenMode": "SHOW_ALL",
    }, separators=(",", ":"))


def get_or_create_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created (tagged as a model-training experiment) when it does not exist."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
                                                  RUNS_VIEW_TAG: runs_view_state()})
        except MlflowException:
            # Another process (a parallel sweep trial) created it in the meantime.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {name!r} was deleted. Restore it (mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}) or set tracking.experiment_name to another name."
        )
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        # Made by an earlier esc_sweep (or by hand) without the tag: it opens on the runs table from now on.
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if experiment.tags.get(RUNS_VIEW_TAG) != runs_view_state():
        client.set_experiment_tag(experiment.experiment_id, RUNS_VIEW_TAG, runs_view_state())
    return experiment.experiment_id


def now_ms() -> int:
    return int(time.time() * 1000)


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), _MAX_BATCH):
        client.log_batch(run_id, params=items[start : start + _MAX_BATCH])


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    items = [RunTag(k, str(v)) for k, v in tags.items()]
    for start in range(0, len(items), _MAX_BATCH):
        client.log_batch(run_id, tags=items[start : start + _MAX_BATCH])


def display_value(value: float) -> float:
    """``value`` rounded to 7 significant digits, so the UI shows 0.7333333, not 0.7333333333333333.

    Significant digits, not decimals: learning rates such as 3e-07 keep their value, and
    every metric stays within 5e-7 (relative) of the exact one.
    """
    return float(f"{float(value):.7g}")


def log_metrics(client: MlflowClient, run_id: str, values: Mapping[str, float], step: int = 0) -> None:
    now = now_ms()
    metrics = [Metric(k, display_value(v), now, step) for k, v in values.items()]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def log_figure(client: MlflowClient, run_id: str, figure, artifact_file: str) -> None:
    client.log_figure(run_id, figure, artifact_file, save_kwargs={"dpi": 100})


def git_commit(*directories: Path) -> str | None:
    """HEAD of the first directory that is in a git repository; None without git or a repo."""
    for directory in directories:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


def source_tags() -> dict[str, str]:
    tags = {"mlflow.source.name": "esc_sweep", "mlflow.source.type": "LOCAL"}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except Exception:  # no user name in some containers
        pass
    return tags
