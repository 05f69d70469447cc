"""A tracking store that cannot be used is one line, exit 2, before any data is read: never a traceback."""

from __future__ import annotations

import sqlite3

import pytest

from esc_sweep.errors import TrackingError
from esc_sweep.tracking.uri import check_store
from tests.conftest import FAST_SYNTHETIC, run_cli


@pytest.mark.parametrize("case", ["not_sqlite", "folder", "parent_is_a_file"])
def test_unusable_sqlite_store_is_one_line_through_the_cli(tmp_path, case):
    if case == "not_sqlite":
        (tmp_path / "mlflow.db").write_text("these bytes are not a database")
        uri, message = f"sqlite:///{tmp_path / 'mlflow.db'}", "is not a SQLite database"
    elif case == "folder":
        (tmp_path / "mlflow.db").mkdir()
        uri, message = f"sqlite:///{tmp_path / 'mlflow.db'}", "is a folder, not a database file"
    else:
        (tmp_path / "file").write_text("x")
        uri, message = f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}", "cannot create the folder"
    out = run_cli(FAST_SYNTHETIC + ["trainer.folds=[1]", f"tracking.uri={uri}"], cwd=tmp_path,
                  env={"MLFLOW_TRACKING_URI": None}, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text, text[-3000:]
    assert message in text and "tracking.uri" in text
    assert not list(tmp_path.glob("outputs/runs/*/*/results.json"))


def test_a_good_store_passes_and_a_locked_one_is_reported(tmp_path, monkeypatch):
    good = tmp_path / "ok.db"
    check_store(f"sqlite:///{good}")  # created on first use
    sqlite3.connect(good).execute("CREATE TABLE t (x)").connection.commit()
    check_store(f"sqlite:///{good}")  # an existing database
    holder = sqlite3.connect(good, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock longer than the wait
    original = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda path, timeout=30: original(path, timeout=0.2))
    try:
        with pytest.raises(TrackingError, match="cannot write MLflow store"):
            check_store(f"sqlite:///{good}")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
