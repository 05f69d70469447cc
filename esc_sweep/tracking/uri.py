"""Where MLflow records go, and whether a tracking server answers.

Kept apart from the rest of ``esc_sweep.tracking`` because it must not import MLflow
(1-2 s): the app checks a server before training, while MLflow itself loads
in the background.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from esc_sweep.errors import TrackingError
from esc_sweep.paths import mlruns_dir, special_kind
from esc_sweep.stores import sqlite_problem

# Tables every MLflow SQLite store has once MLflow made it.
MLFLOW_TABLES = ("experiments", "runs")
_FIX = "fix tracking.uri / $MLFLOW_TRACKING_URI, or unset both to track into ./mlruns"


def default_root() -> Path:
    return mlruns_dir()


def resolve_tracking_uri(cfg: Any = None) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite store under ./mlruns."""
    uri = OmegaConf.select(cfg, "tracking.uri") if cfg is not None else None
    if uri:
        return str(uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{default_root() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def server_problem(uri: str) -> str | None:
    """None when the server at ``uri`` answers its health check, else what went wrong.

    Seconds, not MLflow's minutes of retries.
    """
    import requests  # deferred: requests (~1.2 s), only for tracking servers

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=10).raise_for_status()
    except requests.RequestException as err:
        return type(err).__name__
    return None


def check_server(uri: str) -> None:
    """Raise TrackingError when no MLflow server answers at ``uri``."""
    problem = server_problem(uri)
    if problem is not None:
        raise TrackingError(
            f"no MLflow server answers at {uri} ({problem}). Start it, fix tracking.uri / "
            "$MLFLOW_TRACKING_URI, or unset both to track into ./mlruns."
        )


def check_store(uri: str) -> None:
    """Raise TrackingError, in one line, when a local SQLite store cannot be used.

    Checked before training (no MLflow import: cheap): the path is a folder, the file is
    not a SQLite database, it cannot be opened for writing, or its folder cannot be made.
    Servers are checked by ``check_server``; other stores by MLflow when the run opens.
    """
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):]).expanduser()
    fix = "fix tracking.uri / $MLFLOW_TRACKING_URI, or unset both to track into ./mlruns"
    if path.is_dir():
        raise TrackingError(f"MLflow store {uri} is a folder, not a database file: {fix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackingError(f"cannot create the folder of MLflow store {uri} ({err.strerror or err}): {fix}") from None
    kind = special_kind(path)
    if kind is not None:  # never opened: a FIFO would block training before it starts
        raise TrackingError(f"MLflow store {uri} is {kind}, not a database file: {fix}")
    if path.exists():
        try:
            with open(path, "rb") as handle:
                header = handle.read(16)
        except OSError as err:
            raise TrackingError(f"cannot read MLflow store {uri} ({err.strerror or err}): {fix}") from None
        if header and header != b"SQLite format 3\x00":
            raise TrackingError(f"MLflow store {uri} is not a SQLite database (damaged or another file): "
                                f"move it away, or {fix}")
        problem = sqlite_problem(path) if header else None
        if problem is not None:
            raise TrackingError(f"MLflow store {uri} {problem}: move it away, or {fix}")
    try:  # a write transaction proves the file (and its journal beside it) can be written
        connection = sqlite3.connect(path, timeout=30)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.Error as err:
        raise TrackingError(f"cannot write MLflow store {uri} ({err}): {fix}") from None


def sqlite_store_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store; None for servers and other stores."""
    return Path(uri[len("sqlite:///"):]).expanduser() if uri.startswith("sqlite:///") else None


def check_store_readable(uri: str) -> None:
    """For commands that only read records (runs, predict <run id>, plots --run-id): TrackingError in one line
    when a local store is missing (it is never created empty), damaged, or not an MLflow store."""
    path = sqlite_store_path(uri)
    if path is None:
        return
    if path.is_dir():
        raise TrackingError(f"MLflow store {uri} is a folder, not a database file: {_FIX}")
    if not path.exists():
        raise TrackingError(
            f"no MLflow records at {path}: train something first (python -m esc_sweep ...), run this from the "
            f"folder you trained in, or point --tracking-uri / MLFLOW_TRACKING_URI at the store"
        )
    problem = sqlite_problem(path, MLFLOW_TABLES)
    if problem is not None:
        raise TrackingError(f"MLflow store {path} {problem}: move it away or restore it from a backup, or "
                            f"point --tracking-uri / MLFLOW_TRACKING_URI at another store")
