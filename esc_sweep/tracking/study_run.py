"""A sweep's study run: the parent of its trials' CV runs, and its end-of-study report."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from esc_sweep.tracking.client import (
    OBJECTIVE_TAG,
    ROLE_TAG,
    STUDY_TAG,
    mlflow_client,
    default_artifact_location,
    get_or_create_experiment,
    log_figure,
    log_metrics,
    log_tags,
    source_tags,
)
from esc_sweep.tracking.uri import resolve_tracking_uri

# Which tracking URI each study run lives in, so log_study_report needs only the run id.
_STUDY_URIS: dict[str, str] = {}


def get_or_create_study_run(cfg: Any, study_name: str) -> str:
    """Id of the study's parent run, created on first use.

    A resumed sweep (same study name, same experiment) gets the same run back,
    so all its trials end up under one parent. The run is (re)marked RUNNING;
    end it with ``log_study_report`` or ``end_study_run``.
    """
    uri = resolve_tracking_uri(cfg)
    client = mlflow_client(uri)
    experiment_id = get_or_create_experiment(client, cfg.tracking.experiment_name, default_artifact_location(uri))
    # Compare names in Python: a study name may hold quotes the filter syntax would choke on.
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'study'", order_by=["attributes.start_time ASC"]
    )
    existing = [r for r in runs if r.data.tags.get(STUDY_TAG) == study_name]
    if existing:
        run_id = existing[0].info.run_id
        if existing[0].info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
    else:
        tags = {ROLE_TAG: "study", STUDY_TAG: study_name, **source_tags()}
        run_id = client.create_run(experiment_id, tags=tags, run_name=f"study-{study_name}").info.run_id
    _STUDY_URIS[run_id] = uri
    return run_id


def log_study_report(
    run_id: str,
    figures: Mapping[str, Any],
    metrics: Mapping[str, float],
    artifacts: Iterable[str | Path] = (),
    *,
    status: str | None = "FINISHED",
    tracking_uri: str | None = None,
    objectives: Iterable[str] = (),
) -> None:
    """Log a sweep's end-of-study report to its study run, then end the run.

    ``figures`` maps a name to a matplotlib Figure, saved as
    ``figures/<name>.png``; ``metrics`` are logged as they are (e.g.
    ``best_value``); each path in ``artifacts`` (a file or a folder) is copied
    to the run; ``objectives`` (the study's objective names, e.g. ``mean_inner_acc``)
    go into the tag ``esc_sweep.objective``. ``status``
    ends the run (FINISHED, FAILED or KILLED); None leaves it open. ``tracking_uri`` defaults to the store the run was
    created in by ``get_or_create_study_run``.
    """
    client = mlflow_client(tracking_uri or _STUDY_URIS.get(run_id) or resolve_tracking_uri())
    for name, figure in figures.items():
        log_figure(client, run_id, figure, f"figures/{name}" if name.endswith(".png") else f"figures/{name}.png")
    log_metrics(client, run_id, metrics)
    names = ", ".join(objectives)
    if names:
        log_tags(client, run_id, {OBJECTIVE_TAG: names})
    for path in map(Path, artifacts):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        else:
            client.log_artifact(run_id, str(path))
    if status:
        client.set_terminated(run_id, status)


def end_study_run(run_id: str, status: str = "FINISHED", *, tracking_uri: str | None = None) -> None:
    """End a study run without a report (e.g. KILLED when the sweep is interrupted)."""
    client = mlflow_client(tracking_uri or _STUDY_URIS.get(run_id) or resolve_tracking_uri())
    client.set_terminated(run_id, status)
