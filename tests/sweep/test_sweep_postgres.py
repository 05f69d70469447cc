"""Scale-out: two sweep workers share one study in a real PostgreSQL server and
log to one real MLflow tracking server.

The test starts a throw-away PostgreSQL cluster on 127.0.0.1 (Debian's
``postgresql`` package: ``apt-get install -y postgresql``; skipped with the
reason when its binaries are missing), an ``mlflow server``, and two
``python -m esc_sweep -m ...`` processes running the same command at once.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import requests
from optuna.trial import TrialState

from esc_sweep.sweep.storage import normalize_url
from tests.sweep.test_sweep import ENV, TINY

# Runs in the default suite: .ci/run installs PostgreSQL (Debian package).

N_TRIALS = 6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install -y postgresql)")
    return Path(found[-1]).parent


@pytest.fixture
def postgres_url():
    """A PostgreSQL cluster in a temp dir, on a free loopback port; stopped and removed after the test."""
    bin_dir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="esc-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "esc", "--auth=trust",
                    "--no-sync"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql://esc@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow-server.db'}",
         "--artifacts-destination", str(tmp_path / "mlflow-artifacts")],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not become healthy"
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_two_workers_share_one_postgres_study_and_one_mlflow_server(tmp_path, postgres_url, mlflow_server):
    from mlflow import MlflowClient

    command = [
        sys.executable, "-m", "esc_sweep", "-m", "hparams_search=esc50_optuna", *TINY,
        "trainer.epochs=2", "optimizer.lr=tag(log,interval(0.003,0.05))", "model.dropout=interval(0.0,0.3)",
        f"hydra.sweeper.n_trials={N_TRIALS}", "hydra.sweeper.study_name=pg_study",
        f"hydra.sweeper.storage={postgres_url}", f"tracking.uri={mlflow_server}",
        f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}",
    ]
    workers = []
    for index in range(2):
        # Same command, same working directory: what two shells on one machine would do.
        log = open(tmp_path / f"worker{index}.log", "w")
        workers.append(subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT))
    for index, proc in enumerate(workers):
        proc.wait(timeout=900)
        assert proc.returncode == 0, (tmp_path / f"worker{index}.log").read_text()[-5000:]
    logs = [(tmp_path / f"worker{index}.log").read_text() for index in range(2)]

    study = optuna.load_study(study_name="pg_study", storage=normalize_url(postgres_url))
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == N_TRIALS
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # The only failures allowed are surplus trials closed unrun when both
    # workers asked for the last trial at once.
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs["fail_reason"].startswith("surplus"), t.user_attrs
    # No parameter set ran twice (the workers share a seed; trials do not).
    param_sets = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(param_sets)) == len(param_sets)
    # Both workers ran trials: they cooperated rather than one doing it all.
    ran = [{int(line.split("trial ")[1].split()[0]) for line in log.splitlines()
            if "] trial " in line and (" COMPLETE" in line or " PRUNED" in line)} for log in logs]
    assert ran[0] and ran[1] and not ran[0] & ran[1]
    assert ran[0] | ran[1] == {t.number for t in finished}

    # One study run for both workers, with exactly one CV run per trial under it.
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("esc_sweep")
    runs = client.search_runs([experiment.experiment_id])
    study_runs = [r for r in runs if r.data.tags.get("esc_sweep.role") == "study"]
    assert len(study_runs) == 1
    assert study_runs[0].info.run_id == study.user_attrs["mlflow_parent_run_id"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study_runs[0].info.run_id]
    trial_tags = sorted(int(r.data.tags["esc_sweep.trial"]) for r in children)
    assert trial_tags == sorted(t.number for t in finished)
    for run in children:
        number = int(run.data.tags["esc_sweep.trial"])
        trial = next(t for t in finished if t.number == number)
        if trial.state == TrialState.COMPLETE:
            assert run.data.metrics["cv_val_acc_mean"] == pytest.approx(trial.value)
