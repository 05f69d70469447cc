"""Is a local SQLite store (MLflow's ``mlflow.db``, an Optuna study ``.db``) a whole database of the right kind?

Asked before MLflow or Optuna open the file: they answer a damaged one with a SQLAlchemy
traceback, and open a missing one by creating it empty. Imports nothing heavy.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Iterable, Optional

from esc_sweep.paths import special_kind

SQLITE_HEADER = b"SQLite format 3\x00"
# Stores up to this size are read whole by the integrity check (well under a second);
# larger ones (years of metrics) get their schema read only, so a training start stays quick.
FULL_CHECK_BYTES = 128 * 1024 * 1024


def sqlite_problem(path: Path, tables: Iterable[str] = ()) -> Optional[str]:
    """None when ``path`` is a whole SQLite database holding ``tables``; else what is wrong, in a few words.

    ``PRAGMA quick_check`` reads every page (milliseconds for the few MB a store holds), so
    damage in the middle of the file is found too, not only a broken header; files over
    ``FULL_CHECK_BYTES`` get their schema read only. An empty file is a database not made
    yet: it has none of ``tables``.
    """
    kind = special_kind(path)
    if kind is not None:  # never opened: a FIFO would block the command forever
        return f"is {kind}, not a database file"
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if header and header != SQLITE_HEADER:
        return "is not a SQLite database (damaged, or another kind of file)"
    try:
        # Only reads: the file exists (checked above), so connecting creates nothing.
        connection = sqlite3.connect(str(path), timeout=30)
        try:
            small = os.path.getsize(path) <= FULL_CHECK_BYTES
            verdict = connection.execute("PRAGMA quick_check(1)").fetchone() if small else ("ok",)
            present = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    except sqlite3.OperationalError as err:
        if "locked" in str(err) or "busy" in str(err):
            return None  # in use by another process, not damaged: whoever writes next reports the lock
        return f"is damaged ({err})"
    except sqlite3.Error as err:
        return f"is damaged ({err})"
    if not verdict or verdict[0] != "ok":
        return f"is damaged (integrity check: {verdict[0] if verdict else 'no answer'})"
    missing = [t for t in tables if t not in present]
    if missing:
        return f"holds no {', '.join(missing)} table(s)" if header else "is empty"
    return None
