"""A nested cross-validation's MLflow run: the parent of its outer folds' inner studies and refits.

Layout (``esc-sweep nested``)::

    nested run  (tag esc_sweep.role=nested, esc_sweep.nested=<name>)
    ├── study run of outer fold k's inner search  (linked after the search: mlflow.parentRunId)
    │   └── CV runs of its trials
    └── CV run of outer fold k's refit            (the winner retrained, scored once on fold k)

The nested run holds ``outer_fold_<k>_val_acc``, the estimate ``nested_val_acc_mean`` with its
interval, and ``nested.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from esc_sweep.tracking.client import (
    PARENT_TAG,
    ROLE_TAG,
    mlflow_client,
    default_artifact_location,
    get_or_create_experiment,
    log_metrics,
    source_tags,
)

NESTED_TAG = "esc_sweep.nested"


def get_or_create_nested_run(uri: str, experiment_name: str, name: str, tags: Mapping[str, str]) -> str:
    """The nested run named ``name`` (resumed when a run of that name exists, else created)."""
    client = mlflow_client(uri)
    experiment_id = get_or_create_experiment(client, experiment_name, default_artifact_location(uri))
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'nested'")
    existing = [r for r in runs if r.data.tags.get(NESTED_TAG) == name]
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    all_tags = {ROLE_TAG: "nested", NESTED_TAG: name, **source_tags(), **tags}
    return client.create_run(experiment_id, tags=all_tags, run_name=f"nested-{name}").info.run_id


def link_child(uri: str, child_run_id: str, parent_run_id: str, tags: Optional[Mapping[str, str]] = None) -> None:
    """Nest ``child_run_id`` under the nested run (MLflow's UI nests by ``mlflow.parentRunId``)."""
    client = mlflow_client(uri)
    client.set_tag(child_run_id, PARENT_TAG, parent_run_id)
    for key, value in (tags or {}).items():
        client.set_tag(child_run_id, key, str(value))


def log_outer_fold(uri: str, run_id: str, fold: int, values: Mapping[str, float]) -> None:
    log_metrics(mlflow_client(uri), run_id, {f"outer_fold_{fold}_{k}": v for k, v in values.items()})


def finish_nested_run(uri: str, run_id: str, metrics: Mapping[str, float], results_file: Path,
                      status: str = "FINISHED") -> None:
    client = mlflow_client(uri)
    log_metrics(client, run_id, metrics)
    client.log_artifact(run_id, str(results_file))
    client.set_terminated(run_id, status)


def end_nested_run(uri: str, run_id: str, status: str) -> None:
    mlflow_client(uri).set_terminated(run_id, status)
