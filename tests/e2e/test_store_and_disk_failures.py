"""Every store and disk failure is one line (exit 2), through the real command line.

A damaged MLflow store (random bytes, or a real store with pages overwritten) for each
subcommand that reads it and for training; an Optuna study file for the dashboard;
``predict <unknown run id>`` never creates an empty store; a read-only working folder.
"""

from __future__ import annotations

import ctypes
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from esc_sweep.errors import TrackingError
from esc_sweep.stores import sqlite_problem
from esc_sweep.tracking.uri import check_store_readable
from tests.conftest import run_cli

RUN_ID = "0123456789abcdef0123456789abcdef"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _mlflow_like_store(path: Path, rows: int = 400) -> None:
    """A SQLite file with MLflow's two main tables, several pages long."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE experiments (id INTEGER PRIMARY KEY, name TEXT)")
    connection.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, payload TEXT)")
    connection.executemany("INSERT INTO runs VALUES (?, ?)", [(f"run{i}", "x" * 200) for i in range(rows)])
    connection.commit()
    connection.close()


def _damage_pages(path: Path) -> None:
    """Overwrite the middle of every page after the first: the header stays valid."""
    data = bytearray(path.read_bytes())
    for offset in range(4096, len(data), 4096):
        data[offset + 8: offset + 200] = os.urandom(192)
    path.write_bytes(bytes(data))


def _random_bytes(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(8192))


DAMAGE = {
    "random bytes": (_random_bytes, "is not a SQLite database"),
    "pages overwritten": (lambda p: (_mlflow_like_store(p), _damage_pages(p)), "is damaged"),
}

COMMANDS = {
    "runs": lambda tmp: ["runs"],
    "predict <run id>": lambda tmp: ["predict", RUN_ID, str(tmp / "clip.wav")],
    "plots <run id>": lambda tmp: ["plots", RUN_ID, "--out", str(tmp / "pics")],
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_damaged_mlflow_store_is_one_line_for_every_subcommand_that_reads_it(tmp_path, command, damage):
    make, said = DAMAGE[damage]
    store = tmp_path / "mlruns" / "mlflow.db"
    make(store)
    (tmp_path / "clip.wav").write_bytes(b"")
    before = store.read_bytes()
    out = run_cli(COMMANDS[command](tmp_path), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": None}, timeout=300)
    message = _one_line(out.stderr + out.stdout)
    assert out.returncode == 2, message[-3000:]
    assert "Traceback" not in out.stderr
    assert f"MLflow store {store} {said}" in message, message[-2000:]
    assert store.read_bytes() == before, "the damaged store was changed"


def test_training_on_a_store_damaged_past_its_header_is_one_line(tmp_path):
    store = tmp_path / "mlruns" / "mlflow.db"
    _mlflow_like_store(store)
    _damage_pages(store)
    out = run_cli(["dataset=synthetic", "trainer.epochs=1", "trainer.folds=[1]"], cwd=tmp_path,
                  env={"MLFLOW_TRACKING_URI": None}, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"MLflow store sqlite:///{store} is damaged" in _one_line(out.stderr)


def test_predict_with_an_unknown_run_id_creates_no_store(tmp_path):
    (tmp_path / "clip.wav").write_bytes(b"")
    out = run_cli(["predict", RUN_ID, str(tmp_path / "clip.wav")], cwd=tmp_path,
                  env={"MLFLOW_TRACKING_URI": None}, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"no MLflow records at {tmp_path / 'mlruns' / 'mlflow.db'}" in _one_line(out.stderr)
    assert not (tmp_path / "mlruns").exists()


def test_the_dashboard_on_a_damaged_study_file_is_one_line(tmp_path):
    study = tmp_path / "study.db"
    _mlflow_like_store(study)
    _damage_pages(study)
    out = run_cli(["dashboard", str(study), "--port", "0"], cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"study file {study} is damaged" in _one_line(out.stderr)


def test_the_dashboard_never_adds_optunas_tables_to_an_mlflow_store(tmp_path):
    store = tmp_path / "mlflow.db"
    _mlflow_like_store(store, rows=3)
    before = store.read_bytes()
    out = run_cli(["dashboard", str(store), "--port", "0"], cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "holds no studies table" in _one_line(out.stderr), out.stderr[-3000:]
    assert store.read_bytes() == before


@pytest.mark.parametrize("content, problem", [
    (None, None), (b"", "is empty"), (b"SQLite format 3\x00" + b"\x00" * 100, "is damaged"),
    (b"<html>not a db</html>", "is not a SQLite database"),
])
def test_store_check_says_what_is_wrong(tmp_path, content, problem):
    path = tmp_path / "mlflow.db"
    if content is None:
        _mlflow_like_store(path, rows=3)
    else:
        path.write_bytes(content)
    if problem is None:
        assert sqlite_problem(path, ("runs",)) is None
        check_store_readable(f"sqlite:///{path}")
        return
    assert problem in sqlite_problem(path, ("runs", "experiments"))
    with pytest.raises(TrackingError, match=problem):
        check_store_readable(f"sqlite:///{path}")


def _drop_file_permission_override() -> None:
    """preexec_fn: root loses CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so folder permissions apply to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _permissions_apply() -> bool:
    if os.geteuid() != 0:
        return True
    try:
        return subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_drop_file_permission_override).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(not _permissions_apply(), reason="running as root without a way to drop CAP_DAC_OVERRIDE")
def test_a_read_only_working_folder_is_one_line_naming_it_and_hydra_run_dir(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        out = subprocess.run([sys.executable, "-m", "esc_sweep", "dataset=synthetic", "trainer.epochs=1",
                              "tracking=none"], cwd=folder, capture_output=True, text=True, timeout=300,
                             preexec_fn=_drop_file_permission_override if os.geteuid() == 0 else None)
    finally:
        folder.chmod(0o755)
    message = _one_line(out.stderr)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"cannot write in {folder} (Permission denied)" in message and "hydra.run.dir" in message, message
    assert list(folder.iterdir()) == []


def test_any_other_subcommand_meeting_a_damaged_store_still_gets_one_line_naming_it(tmp_path):
    """The command line's safety net: a database error that no check caught (here: compare) is worded."""
    store = tmp_path / "mlruns" / "mlflow.db"
    _random_bytes(store)
    out = run_cli(["compare", RUN_ID, RUN_ID[:-1] + "0"], cwd=tmp_path, env={"MLFLOW_TRACKING_URI": None},
                  timeout=300)
    message = _one_line(out.stderr + out.stdout)
    assert out.returncode == 2 and "Traceback" not in out.stderr, message[-3000:]
    assert str(store) in message and ("could not be used" in message or "is not a SQLite database" in message), \
        message[-2000:]
