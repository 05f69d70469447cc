"""Where a study lives, and how workers sharing it stay out of each other's way.

Storage URLs (``hydra.sweeper.storage``):

* ``sqlite:///relative.db`` / ``sqlite:////absolute.db``: one file, one machine;
* ``postgresql://user@host:5432/db`` (or ``mysql://``): several machines;
* ``journal:///absolute/study.log`` / ``journal://relative/study.log``: Optuna's
  JournalStorage on an append-only file (no database; one machine, or a shared
  filesystem with working ``link()`` locks);
* none: ``sqlite:///<original cwd>/outputs/optuna/<study name>.db`` (esc_sweep's
  semantics) or, in compat mode, an in-memory study (the Optuna plugin's default).

Relative paths are taken from the folder the command was run in, so a job that
Hydra runs in another folder (``hydra.job.chdir=true``) opens the same study.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from esc_sweep.errors import EscSweepError
from esc_sweep.sweep import optuna_private
from esc_sweep.paths import optuna_storage_url
from esc_sweep.stores import sqlite_problem

log = logging.getLogger(__name__)

JOURNAL = "journal://"
# A trial's liveness on storages without Optuna's heartbeat table (JournalStorage):
# the time of its last beat, in a trial system attribute.
HEARTBEAT_ATTR = "esc_sweep:heartbeat"
# The reason recorded for a trial whose worker stopped beating.
STALE_REASON = "stale: its worker stopped sending heartbeats (killed?)"


class StorageError(EscSweepError):
    """The study storage cannot be used (bad URL, a path that cannot be written)."""


def default_storage_url(original_cwd: str, study_name: str) -> str:
    """sqlite:///<original cwd>/outputs/optuna/<study_name>.db (folder created)."""
    try:
        return optuna_storage_url(original_cwd, study_name)
    except OSError as err:
        raise StorageError(f"cannot create the default study folder under {original_cwd}/outputs/optuna: "
                           f"{err.strerror or err}") from err


def normalize_url(url: str) -> str:
    """``postgresql://`` with the driver that is installed.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; with only
    psycopg2 installed (our dev dependency) that fails, so name psycopg2.
    """
    if url.startswith(("postgresql://", "postgres://")):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def resolve_url(url: str, cwd: str | Path) -> str:
    """The URL with its driver named and a relative SQLite or journal path made absolute (from ``cwd``)."""
    url = normalize_url(url.strip())
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:" and not path.startswith("/"):
            return f"sqlite:///{Path(cwd, path)}"
        return url
    if url.startswith(JOURNAL):
        # journal:///abs/file.log (like file:///); journal:////abs/file.log (like sqlite) works too.
        path = Path(re.sub(r"^/+", "/", url[len(JOURNAL):]))
        if not str(path) or str(path) == ".":
            raise StorageError(f"storage {url!r}: a journal URL names a file, e.g. journal:///abs/study.log")
        return f"{JOURNAL}{path if path.is_absolute() else Path(cwd, path)}"
    if "://" not in url:
        raise StorageError(f"storage {url!r} is not a URL: use sqlite:///<file>.db, journal:///<file>.log "
                           "or postgresql://user@host/db")
    return url


def url_for(target: str, cwd: str | Path) -> str:
    """A storage URL from a URL or a path to a study file (``.db``/``.sqlite*``: SQLite; else a journal)."""
    if "://" in target:
        return resolve_url(target, cwd)
    path = Path(target).expanduser()
    path = path if path.is_absolute() else Path(cwd, path)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return f"sqlite:///{path}"
    return f"{JOURNAL}{path}"


def local_file(url: str) -> Path | None:
    """The file behind a SQLite or journal URL; None for a server."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        return None if path in ("", ":memory:") else Path(path)
    if url.startswith(JOURNAL):
        return Path(re.sub(r"^/+", "/", url[len(JOURNAL):]))
    return None


def mask_url(url: str | None) -> str:
    """The storage URL without its password, for logs."""
    if url is None:
        return "memory (not saved)"
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _make_folder(url: str, folder: Path) -> None:
    """``folder`` and its parents, or a ``StorageError`` that says which path is in the way."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise StorageError(f"storage {mask_url(url)} cannot be used: {blocker} is a file, not a folder") from err
        raise StorageError(f"storage {mask_url(url)} cannot be used: cannot create the folder {folder}: "
                           f"{err.strerror or err}") from err


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def open_storage(url: str | None, heartbeat_interval: int = 0, grace_period: int = 0) -> optuna.storages.BaseStorage:
    """The Optuna storage behind ``url`` (None: in memory); errors are one-line ``StorageError``s.

    ``heartbeat_interval`` only matters to RDB storages (Optuna's heartbeat table);
    other storages are watched through ``Liveness``.
    """
    if url is None:
        return optuna.storages.InMemoryStorage()
    path = local_file(url)
    if path is not None:
        _make_folder(url, path.parent)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if url.startswith(JOURNAL):
                assert path is not None
                with open(path, "ab"):  # fails now, with the reason, if the file cannot be written
                    pass
                return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
            if url.startswith("sqlite:///"):
                # A damaged study file (random bytes, overwritten pages) is one line naming it, before
                # SQLAlchemy reads it; a new or empty file is a study not made yet.
                problem = sqlite_problem(path) if path is not None and path.exists() else None
                if problem:
                    raise StorageError(f"storage {mask_url(url)} cannot be used: {path} {problem}; move it "
                                       "away (the study in it cannot be resumed) or name another storage")
                # Several processes may write the file; wait for its lock instead of failing.
                engine_kwargs = {"connect_args": {"timeout": 60}}
            else:
                engine_kwargs = {"pool_pre_ping": True}
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval or None,
                grace_period=(grace_period or None) if heartbeat_interval else None,
            )
    except EscSweepError:
        raise
    except Exception as err:  # OSError, SQLAlchemy's errors, a missing driver, a bad URL
        raise StorageError(f"storage {mask_url(url)} cannot be used: {_first_line(err)}") from err


def make_storage(url: str, heartbeat_interval: int, grace_period: int) -> optuna.storages.BaseStorage:
    """Kept for callers of the earlier name: ``open_storage`` for a URL."""
    return open_storage(url, heartbeat_interval, grace_period)


@contextlib.contextmanager
def study_lock(url: str | None, study_name: str | None) -> Iterator[None]:
    """Mutual exclusion between workers of one study, for the few steps that are
    not atomic in Optuna or MLflow (creating the schema and the study, storing its
    search space, finding or creating the study's MLflow parent run).

    PostgreSQL: a session advisory lock, so it spans machines. SQLite and journal
    files: a file lock next to the file. In memory: nothing to share. Anything
    else: no lock, and a warning.
    """
    if url is None:
        yield
        return
    path = local_file(url)
    if path is not None:
        # Not "<file>.lock": JournalFileBackend's own lock has that name.
        lock_path = path.with_name(path.name + ".study-lock")
        _make_folder(url, lock_path.parent)
        try:
            handle = open(lock_path, "a")
        except OSError as err:
            raise StorageError(f"storage {url} cannot be used: cannot create the lock file {lock_path}: "
                               f"{err.strerror or err}") from err
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if url.startswith(("postgresql", "postgres")):
        import sqlalchemy  # deferred: sqlalchemy (~0.5 s), only for PostgreSQL storages

        key = int.from_bytes(hashlib.sha1(f"esc_sweep:{study_name}".encode()).digest()[:8], "big", signed=True)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            try:
                connection = engine.connect()
            except Exception as err:
                raise StorageError(f"storage {mask_url(url)} cannot be used: {_first_line(err)}") from err
            with connection:
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


class Liveness:
    """Tells a RUNNING trial whose worker is alive from one whose worker was killed.

    RDB storages (SQLite, PostgreSQL, MySQL): Optuna's heartbeat table, timed by
    the database's clock. Other persistent storages (journal files): the time of
    the trial's last beat in its ``esc_sweep:heartbeat`` system attribute, timed
    by the workers' clocks. In memory: nothing to watch (the study dies with its
    only worker). ``interval`` 0 turns it off.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, interval: int, grace_period: int):
        self.storage = storage
        self.interval = int(interval or 0)
        self.grace_period = int(grace_period or 0)
        self.native = isinstance(storage, optuna.storages.RDBStorage)
        if isinstance(storage, optuna.storages.InMemoryStorage):
            self.interval = 0

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def beat(self, trial_id: int) -> None:
        if not self.enabled:
            return
        if self.native:
            self.storage.record_heartbeat(trial_id)
        else:
            self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def stale_trial_ids(self, study: optuna.Study) -> list[int]:
        if not self.enabled:
            return []
        if self.native:
            return optuna_private.rdb_stale_trial_ids(self.storage, study)
        now = time.time()
        stale = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            last = trial.system_attrs.get(HEARTBEAT_ATTR)
            if last is None and trial.datetime_start is not None:
                last = trial.datetime_start.timestamp()
            if last is not None and now - float(last) > self.grace_period:
                stale.append(optuna_private.trial_id(trial))
        return stale


class Heartbeat:
    """Beats for RUNNING trials while their jobs run, so that other workers can
    tell a live trial from one whose worker was killed."""

    def __init__(self, liveness: Liveness, trial_ids: list[int]):
        self.liveness = liveness
        self.trial_ids = trial_ids
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while True:
            for trial_id in self.trial_ids:
                try:
                    self.liveness.beat(trial_id)
                except Exception as err:  # a missed beat is not worth killing the trial
                    log.warning("heartbeat of trial id %s failed: %s", trial_id, err)
            if self._stop.wait(self.liveness.interval):
                return

    def __enter__(self) -> "Heartbeat":
        if self.liveness.enabled:
            self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def fail_stale_trials(study: optuna.Study, liveness: Liveness | optuna.storages.BaseStorage) -> list[int]:
    """Mark RUNNING trials whose heartbeat stopped as FAIL, with their reason.

    Returns the numbers of the trials failed here. (Optuna's own
    ``fail_stale_trials`` cannot record a reason: a finished trial is read-only.)
    """
    if not isinstance(liveness, Liveness):  # an RDBStorage with its own heartbeat settings
        storage = liveness
        interval = storage.get_heartbeat_interval() if isinstance(storage, optuna.storages.RDBStorage) else 0
        liveness = Liveness(storage, interval or 0, 0)
    failed = []
    for trial_id in liveness.stale_trial_ids(study):
        try:
            storage = optuna_private.storage_of(study)
            storage.set_trial_user_attr(trial_id, "fail_reason", STALE_REASON)
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(storage.get_trial(trial_id).number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first
    return failed
