"""``esc-sweep dashboard``: optuna-dashboard on 127.0.0.1 for a study storage.

A short-lived start against a local SQLite study: the command's stdout names the
port (``--port 0``), the dashboard's API lists the study, and the server stops on
SIGTERM. Without optuna-dashboard (the ``dashboard`` extra) the start test skips and
the command's one-line error is checked in process.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
import warnings

import optuna
import pytest

from esc_sweep.errors import EscSweepError
from tests.sweep.tiny_app import ENV


def _study(tmp_path) -> str:
    path = tmp_path / "studies" / "dash.db"
    path.parent.mkdir()
    study = optuna.create_study(study_name="dash_study", storage=f"sqlite:///{path}", direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["mean_val_acc"])
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    return str(path)


def test_dashboard_serves_the_study_on_localhost_and_stops(tmp_path):
    if importlib.util.find_spec("optuna_dashboard") is None:
        pytest.skip("optuna-dashboard is not installed (the dashboard extra: pip install -c constraints.txt "
                    "-e '.[dev,dashboard]')")
    path = _study(tmp_path)
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "esc_sweep", "dashboard", path, "--port", "0"], cwd=tmp_path,
                            env=ENV, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        first = proc.stdout.readline()
        assert "1 studies (dash_study)" in first, first + (tmp_path / "dashboard.log").read_text()
        served = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", served)
        assert match, served
        api = f"http://127.0.0.1:{match.group(1)}/api/studies"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
            try:
                with urllib.request.urlopen(api, timeout=5) as response:
                    studies = json.loads(response.read())["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not answer in 60 s"
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == ["dash_study"]
    finally:
        proc.send_signal(signal.SIGTERM)  # esc-sweep takes SIGTERM as Ctrl-C: a clean stop
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, (tmp_path / "dashboard.log").read_text()


def test_dashboard_without_optuna_dashboard_says_how_to_install_it(tmp_path, monkeypatch):
    from esc_sweep.app import dashboard

    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import fails as if not installed
    with pytest.raises(EscSweepError, match=r"optuna-dashboard is not installed: pip install .*\[dashboard\]"):
        dashboard.main([_study(tmp_path)])


def test_dashboard_refuses_a_missing_study_file_instead_of_creating_one(tmp_path):
    if importlib.util.find_spec("optuna_dashboard") is None:
        pytest.skip("optuna-dashboard is not installed")
    from esc_sweep.app import dashboard

    with pytest.raises(EscSweepError, match="no study file at"):
        dashboard.main([str(tmp_path / "nope.db")])
    assert not (tmp_path / "nope.db").exists()
