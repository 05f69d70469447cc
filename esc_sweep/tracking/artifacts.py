"""Files to and from an MLflow run: a bundle folder, plots, a folder download."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from esc_sweep.errors import EscSweepError
from esc_sweep.tracking.uri import check_store_readable, is_server, resolve_tracking_uri, server_problem


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def log_folder(uri: str, run_id: str, folder: Path, artifact_path: str,
               metrics: Optional[Mapping[str, Any]] = None) -> None:
    """Copy ``folder`` to ``artifact_path`` of an existing (possibly ended) run, with finite ``metrics``."""
    from esc_sweep.tracking.client import mlflow_client  # deferred: mlflow (~4 s)

    client = mlflow_client(uri)
    client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)
    for key, value in (metrics or {}).items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            client.log_metric(run_id, key, float(value))


def log_files(paths: Sequence[Path], artifact_path: str, run_id: Optional[str] = None,
              tracking_uri: Optional[str] = None) -> Optional[str]:
    """Log files to ``artifact_path`` of ``run_id``, else of the active MLflow run; returns the run id used
    (None, logging nothing, without ``run_id`` and without an active run)."""
    import mlflow  # deferred: mlflow (~4 s): importing this module (plots, bundles) must stay light

    if run_id:
        from mlflow.exceptions import MlflowException  # deferred: mlflow, as above
        from mlflow.tracking import MlflowClient  # deferred: mlflow, as above

        uri = tracking_uri or resolve_tracking_uri()
        try:
            check_store_readable(uri)  # never an empty store made by asking, nor a traceback for a damaged one
        except EscSweepError as err:
            raise EscSweepError(f"--run-id {run_id}: {err}") from None
        client = MlflowClient(uri)
        try:
            client.get_run(run_id)
        except MlflowException:
            raise EscSweepError(f"--run-id {run_id}: no such MLflow run at {uri} (set --tracking-uri)") from None
        for path in paths:
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)
        return run_id
    active = mlflow.active_run()
    if active is None:
        return None
    for path in paths:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
    return active.info.run_id


def download_run_folder(run_id: str, artifact_path: str, destination: Path, tracking_uri: Optional[str],
                        *, missing: str, error: type[EscSweepError] = EscSweepError) -> Path:
    """Download ``artifact_path`` of ``run_id`` into ``destination``; ``error(missing)`` when it has none."""
    import mlflow  # deferred: mlflow (~4 s): only bundles given as run ids need it
    from mlflow.exceptions import MlflowException  # deferred: mlflow, as above
    from mlflow.tracking import MlflowClient  # deferred: mlflow, as above

    uri = tracking_uri or resolve_tracking_uri()
    problem = server_problem(uri) if is_server(uri) else None
    if problem is not None:
        raise error(f"no MLflow server answers at {uri} ({problem}): start it, or fix --tracking-uri / "
                    f"MLFLOW_TRACKING_URI")
    check_store_readable(uri)  # never an empty store made by asking, nor a traceback for a damaged one
    client = MlflowClient(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise error(
            f"MLflow run {run_id} not found at tracking URI {uri}: check the id, or point "
            f"--tracking-uri / MLFLOW_TRACKING_URI at the server that tracked it"
        ) from None
    if not client.list_artifacts(run_id, artifact_path):
        raise error(missing)
    # MLflow draws a tqdm bar per download on stderr (three for one bundle): noise in predict's output.
    # Read at each download, so setting it here is enough; a user who set it keeps their choice.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=str(destination), tracking_uri=uri
        )
    except (MlflowException, OSError) as err:
        raise error(f"{missing} ({_first_line(err)})") from None
    return Path(local)
