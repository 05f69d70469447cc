"""The MLflow runs table in a real headless Chromium: does the landing view answer "which run is best?".

Three short CV runs of the real command go into one SQLite store; ``mlflow server`` serves it and the
browser opens the link each run logs. Without clicking, the table must show the runs best first, each
named by its accuracy, with the mean accuracy and its 95 % interval as columns and the dataset with
its classes. MLflow's compare page of those runs plots their accuracy first, and no system metric.
Chromium and ChromeDriver are Debian packages (``tests/e2e/serve_support.py``); the test
skips, saying so, without them.

Set ``ESC_SWEEP_SCREENSHOTS=<folder>`` to keep the screenshot (``docs/images/mlflow_runs_table.png``
is this test's).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from mlflow import MlflowClient

from tests.conftest import FAST_SYNTHETIC, run_cli
from tests.e2e.serve_support import browser_missing, start_chromium

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
WAIT_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train(cwd: Path, *extra: str) -> str:
    out = run_cli(FAST_SYNTHETIC + ["dataset.num_folds=3", "trainer.folds=[1,2,3]", "trainer.epochs=3",
                                    f"trainer.checkpoint_dir={cwd / 'checkpoints'}", *extra],
                  cwd=cwd, env={"MLFLOW_TRACKING_URI": None}, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_the_landing_view_ranks_runs_by_accuracy_with_its_interval(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _train(tmp_path, "optimizer.lr=0.01")
    _train(tmp_path, "optimizer.lr=0.0003")
    log = _train(tmp_path, "dataset.classes=[class_0,class_1,class_2]")
    # The link a run logs for a local store: the command to start the UI, then the URL to open.
    match = re.search(r"mlflow ui --backend-store-uri (\S+), then open http://127\.0\.0\.1:5000(/#/\S+)", log)
    assert match, log[-2000:]
    store, route = match.group(1), match.group(2)
    assert "viewStateShareKey=esc_sweep" in route

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = None
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(1)
        driver = start_chromium(tmp_path / "profile")
        driver.set_window_size(1900, 700)
        driver.get(f"http://127.0.0.1:{port}{route}")

        def names(d):
            # Run names as the table shows them (MLflow links each to its run page).
            found = [a.text for a in d.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']") if "%" in a.text]
            return found if len(found) >= 3 else False

        shown = WebDriverWait(driver, WAIT_SECONDS).until(names)
        time.sleep(2)  # the last cells render after the names
        folder = Path(os.environ.get("ESC_SWEEP_SCREENSHOTS") or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / ".partial-mlflow_runs_table.png"
        assert driver.save_screenshot(str(partial))
        os.replace(partial, folder / "mlflow_runs_table.png")  # never a half-written picture in docs/images
        page = driver.find_element(By.TAG_NAME, "body").text
        # Named by accuracy, best first (the saved view sorts by cv_val_acc_mean, descending).
        accuracies = [float(re.match(r"([\d.]+) %", name).group(1)) for name in shown]
        assert accuracies == sorted(accuracies, reverse=True), shown
        # Without clicking: the mean accuracy and its interval as columns (the tag columns follow them,
        # further right), and the Dataset column with the class subset, folds and epochs.
        for column in ("cv_val_acc_mean", "cv_val_acc_ci95_low", "cv_val_acc_ci95_high"):
            assert column in page, (column, page[-3000:])
        assert "synthetic[3 classes]" in page and "3 Folds · 3" in page, page[-3000:]  # the UI capitalises the context
        assert "fold-1" not in page  # CV runs only: the fold runs stay under their CV runs' pages
        assert "system metrics" not in page  # the CPU/memory sampler's child run stays out of it too

        # MLflow's compare page plots the first metric the runs share: the accuracy, not system/cpu_...
        client = MlflowClient(store)
        experiment = client.get_experiment_by_name("esc_sweep").experiment_id
        ids = [run.info.run_id for run in client.search_runs([experiment], "tags.`esc_sweep.role` = 'cv'")]
        # The URL the UI's own Compare button opens: both lists as URL-quoted JSON.
        driver.get(f"http://127.0.0.1:{port}/#/compare-runs?runs={quote(json.dumps(ids))}"
                   f"&experiments={quote(json.dumps([experiment]))}")

        def plotted(d):
            text = d.find_element(By.TAG_NAME, "body").text
            assert "Error while" not in text, text[:1000]  # a wrong URL: fail now, naming it, not at the timeout
            return text if "Metrics:" in text else False

        compare = WebDriverWait(driver, WAIT_SECONDS).until(plotted)
        first_metric = compare.split("Metrics:", 1)[1].split()[0]
        assert first_metric.startswith("cv_val_acc"), compare[:2000]
        assert "system/" not in compare, compare[:3000]
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
