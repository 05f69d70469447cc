"""A finished CV run's per-fold results, read back from MLflow (for ``esc-sweep compare``).

Every CV run logs its ``results.json`` (``CVResult.to_dict``) as an artifact and its
comparability labels as tags (``esc_sweep.tracking.labels``); this module returns both
for a run id, or for an unambiguous prefix of one (``esc-sweep runs`` prints 8 characters).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from esc_sweep.errors import TrackingError
from esc_sweep.tracking.client import mlflow_client
from esc_sweep.tracking.runs_table import require_store, finished_cv_runs
from esc_sweep.tracking.uri import resolve_tracking_uri


def find_run_id(ref: str, tracking_uri: Optional[str] = None) -> str:
    """The full id of the finished CV run ``ref`` names (a full id or a unique prefix of one)."""
    uri = tracking_uri or resolve_tracking_uri()
    runs = finished_cv_runs(uri, all_experiments=True)
    exact = [run.run_id for run in runs if run.run_id == ref]
    if exact:
        return exact[0]
    matches = sorted({run.run_id for run in runs if run.run_id.startswith(ref)})
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise TrackingError(f"run id {ref!r} is ambiguous in {uri}: it starts {', '.join(m[:12] for m in matches)}"
                            "; give more characters")
    raise TrackingError(f"no finished CV run {ref!r} in {uri} (and no run folder of that name here): "
                        "list them with esc-sweep runs --all")


def cv_run_results(ref: str, tracking_uri: Optional[str] = None) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(run id, its results.json, its tags) for the finished CV run ``ref``."""
    uri = tracking_uri or resolve_tracking_uri()
    require_store(uri)
    run_id = find_run_id(ref, uri)
    client = mlflow_client(uri)
    run = client.get_run(run_id)
    # No artifact download bars on the console: this is a read of one small file.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "results.json", tmp)
        except Exception as err:  # no such artifact (a run logged by another tool), an unreachable store
            raise TrackingError(f"run {run_id}: its results.json cannot be read from {uri} "
                                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
        results = json.loads(Path(path).read_text())
    return run_id, results, dict(run.data.tags)
