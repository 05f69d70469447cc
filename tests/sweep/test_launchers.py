"""The Hydra launchers docs/sweeps.md promises, for real: joblib (several local
processes) and submitit's local executor each run a small sweep of the tiny app
(tests/sweep/tiny_app.py) against one storage, with exactly ``n_trials`` finished
trials, the jobs in processes other than the sweeper's.

Both launchers come with the ``launchers`` extra (``pip install -c constraints.txt
-e ".[dev,launchers]"``); without it these tests skip, saying so.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from tests.sweep.tiny_app import ENV, signature, trials, write_app


def _need(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{package} is not installed (the launchers extra: pip install -c constraints.txt "
                    f"-e '.[dev,launchers]')")


def _sweep(tmp_path, launcher: list[str], storage: str, n_trials: int, n_jobs: int) -> subprocess.Popen:
    app = write_app(tmp_path / "app")
    out = tmp_path / "out"
    # compat=false: esc_sweep's semantics, n_trials as the study's total of finished trials;
    # mode=fail_y1: some trials fail in their worker process and are replaced.
    command = [sys.executable, "app.py", "-m", f"hydra.sweep.dir={out}", *launcher,
               "hydra.sweeper.compat=false", "mode=fail_y1", "hydra.sweeper.max_failure_rate=0.9",
               f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.n_jobs={n_jobs}",
               f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=launched"]
    log = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen(command, cwd=app, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    proc.wait(timeout=600)
    assert proc.returncode == 0, (tmp_path / "sweep.log").read_text()[-5000:]
    return proc


def _check(tmp_path, proc: subprocess.Popen, storage: str, n_trials: int) -> set[int]:
    got = trials(storage, "launched")
    assert sum(t.state == TrialState.COMPLETE for t in got) == n_trials
    assert not [t for t in got if t.state == TrialState.RUNNING]
    for t in got:
        if t.state == TrialState.FAIL:
            assert t.params["y"] == 1 and "cfg.mode is fail" in t.user_attrs["fail_reason"]
    jobs = {t.number: json.loads((tmp_path / "out" / str(t.number) / "job.json").read_text()) for t in got}
    for t in got:  # each job ran its own trial's parameters
        assert jobs[t.number]["x"] == pytest.approx(t.params["x"]) and jobs[t.number]["y"] == t.params["y"]
    pids = {job["pid"] for job in jobs.values()}
    assert proc.pid not in pids  # the trials ran in the launcher's processes
    return pids


def test_joblib_launcher_runs_trials_in_parallel_processes_on_one_journal_storage(tmp_path):
    _need("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher")
    storage = f"journal://{tmp_path / 'study.log'}"
    proc = _sweep(tmp_path, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"], storage, n_trials=7, n_jobs=3)
    pids = _check(tmp_path, proc, storage, 7)
    assert len(pids) >= 2  # several worker processes
    assert "Joblib.Parallel(n_jobs=3" in (tmp_path / "sweep.log").read_text()


def test_submitit_local_launcher_runs_a_sweep_on_one_sqlite_storage(tmp_path):
    _need("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = _sweep(tmp_path, ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                             "hydra.launcher.cpus_per_task=1", "hydra.launcher.gpus_per_node=0"],
                  storage, n_trials=4, n_jobs=2)
    _check(tmp_path, proc, storage, 4)
    assert (tmp_path / "out" / ".submitit").is_dir()
    assert signature(trials(storage, "launched"))  # readable after the executor's processes are gone
