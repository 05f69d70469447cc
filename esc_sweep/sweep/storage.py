"""Where a study lives, and how workers sharing it stay out of each other's way."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import re
import threading
import warnings
from pathlib import Path
from typing import Iterator

import optuna
from optuna.trial import TrialState

from esc_sweep.paths import optuna_storage_url

log = logging.getLogger(__name__)


def default_storage_url(original_cwd: str, study_name: str) -> str:
    """sqlite:///<original cwd>/outputs/optuna/<study_name>.db (folder created)."""
    return optuna_storage_url(original_cwd, study_name)


def normalize_url(url: str) -> str:
    """``postgresql://`` with the driver that is installed.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; with only
    psycopg2 installed (our dev dependency) that fails, so name psycopg2.
    """
    if url.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def mask_url(url: str) -> str:
    """The storage URL without its password, for logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def make_storage(url: str, heartbeat_interval: int, grace_period: int) -> optuna.storages.RDBStorage:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        # Several processes may write the file; wait for its lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval or None,
            grace_period=(grace_period or None) if heartbeat_interval else None,
        )


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Mutual exclusion between workers of one study, for the few steps that are
    not atomic in Optuna or MLflow (creating the schema and the study, finding
    or creating the study's MLflow parent run).

    PostgreSQL: a session advisory lock, so it spans machines. SQLite: a file
    lock next to the database (SQLite only works on one machine anyway).
    Anything else: no lock, and a warning.
    """
    if url.startswith("sqlite:///"):
        lock_path = Path(url[len("sqlite:///"):] + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if url.startswith(("postgresql", "postgres")):
        import sqlalchemy

        key = int.from_bytes(hashlib.sha1(f"esc_sweep:{study_name}".encode()).digest()[:8], "big", signed=True)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        finally:
            engine.dispose()
        return
    log.warning("no cross-worker lock for storage %s; start one worker first if several share it", mask_url(url))
    yield


class Heartbeat:
    """Records a heartbeat for RUNNING trials while their jobs run, so that other
    workers can tell a live trial from one whose worker was killed."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_ids: list[int]):
        self.storage = storage
        self.trial_ids = trial_ids
        self.interval = storage.get_heartbeat_interval()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while True:
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as err:  # a missed beat is not worth killing the trial
                    log.warning("heartbeat of trial id %s failed: %s", trial_id, err)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "Heartbeat":
        if self.interval:
            self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def fail_stale_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> list[int]:
    """Mark RUNNING trials whose heartbeat stopped as FAIL, with their reason.

    Returns the numbers of the trials failed here. (Optuna's own
    ``fail_stale_trials`` cannot record a reason: a finished trial is read-only.)
    """
    if not storage.get_heartbeat_interval():
        return []
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            study._storage.set_trial_user_attr(
                trial_id, "fail_reason", "stale: its worker stopped sending heartbeats (killed?)"
            )
            if study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(study._storage.get_trial(trial_id).number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first
    return failed
