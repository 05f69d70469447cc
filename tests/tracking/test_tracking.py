"""MLflow tracking: the real CLI against the default SQLite store and a real `mlflow server`.

Every run here is a real ``python -m esc_sweep`` subprocess on synthetic data;
the records are read back with ``MlflowClient`` or the server's REST API.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from mlflow import MlflowClient
from mlflow.entities import ViewType

from esc_sweep.figures import results as figures
from esc_sweep.tracking.cv_run import flatten_config
from esc_sweep.tracking.study_run import end_study_run, get_or_create_study_run, log_study_report
from tests.conftest import FAST_SYNTHETIC, REPO, compose_config, run_cli
from tests.e2e.conftest import interrupt_cli

MLFLOW = str(Path(sys.executable).parent / "mlflow")
# The env of every CLI run: no tracking server inherited from the developer's shell.
# A function, not a snapshot: the environment may change after this module is imported.
def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


# For the tests that interrupt a fold part-way: more work per epoch, so that on a loaded machine
# (MLflow's records lag behind training) the interrupt still lands inside the fold it waited for.
SLOWER = ("dataset.clips_per_class=40", "dataset.clip_seconds=1.0")


def _cli(tmp: Path, *extra: str, folds: int = 3) -> list[str]:
    fold_args = [f"dataset.num_folds={folds}", f"trainer.folds=[{','.join(map(str, range(1, folds + 1)))}]"]
    return FAST_SYNTHETIC + fold_args + [f"trainer.checkpoint_dir={tmp / 'checkpoints'}", *extra]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "esc_sweep", *args], cwd=cwd, env=clean_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def _results(cwd: Path) -> dict:
    found = sorted(cwd.glob("outputs/runs/*/*/results.json"))
    assert found, "no results.json written"
    return json.loads(found[-1].read_text())


def _sqlite_uri(cwd: Path) -> str:
    return f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited:\n{log.read_text()[-3000:]}"
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server at {url} not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


def _start_server(command: list[str], cwd: Path, port: int) -> subprocess.Popen:
    log = cwd / f"server-{port}.log"
    # Its own session, so the uvicorn workers it spawns are stopped with it.
    # Job execution (background huey workers) is not needed to browse runs.
    proc = subprocess.Popen(command, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env={**clean_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc, log)
    except BaseException:
        _stop_server(proc)
        raise
    return proc


def _stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _experiment_id(client: MlflowClient) -> str:
    experiment = client.get_experiment_by_name("esc_sweep")
    assert experiment is not None, "experiment esc_sweep was not created"
    return experiment.experiment_id


def _runs(client: MlflowClient, filter_string: str = "", view=ViewType.ACTIVE_ONLY) -> list:
    return list(client.search_runs([_experiment_id(client)], filter_string, run_view_type=view))


def _cv_runs(client: MlflowClient) -> list:
    return _runs(client, "tags.`esc_sweep.role` = 'cv'")


def _children(client: MlflowClient, run_id: str, view=ViewType.ACTIVE_ONLY) -> dict[int, object]:
    runs = _runs(client, f"tags.mlflow.parentRunId = '{run_id}' and tags.`esc_sweep.role` = 'fold'", view)
    by_fold = {int(r.data.tags["fold"]): r for r in runs}
    assert len(by_fold) == len(runs), f"two runs for one fold: {[r.data.tags['fold'] for r in runs]}"
    return by_fold


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    files = []
    for item in client.list_artifacts(run_id, path):
        files += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return files


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _steps(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# --------------------------------------------------------------------------
# A finished 3-fold run, against both stores


@pytest.fixture(scope="module")
def default_store_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("default-store")
    _run(_cli(cwd, "trainer.epochs=3", "tracking.log_models=true"), cwd)
    return cwd, _sqlite_uri(cwd)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server with its own SQLite backend and artifact folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    proc = _start_server(
        [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "server-artifacts")],
        root, port,
    )
    yield f"http://127.0.0.1:{port}", root
    _stop_server(proc)


@pytest.fixture(scope="module")
def server_store_run(tmp_path_factory, mlflow_server):
    uri, _ = mlflow_server
    cwd = tmp_path_factory.mktemp("server-store")
    _run(_cli(cwd, "trainer.epochs=3", f"tracking.uri={uri}"), cwd)
    return cwd, uri


@pytest.mark.parametrize("store", ["default_store_run", "server_store_run"])
def test_cv_run_has_parent_with_three_fold_children_curves_and_figures(store, request, tmp_path):
    cwd, uri = request.getfixturevalue(store)
    results = _results(cwd)
    client = MlflowClient(uri)

    (parent,) = _cv_runs(client)
    assert parent.info.status == "FINISHED"
    children = _children(client, parent.info.run_id)
    assert sorted(children) == [1, 2, 3]

    summary = results["summary"]
    for key in ("cv_val_acc_mean", "cv_val_acc_std", "cv_train_acc_mean", "cv_gap_mean", "cv_val_f1_mean",
                "pooled_val_acc"):
        assert parent.data.metrics[key] == pytest.approx(summary[key], rel=1e-6), key
    assert 0 < parent.data.metrics["cv_val_acc_std"]  # three different folds

    for record in results["folds"]:
        child = children[record["fold"]]
        assert child.info.status == "FINISHED"
        assert child.data.tags["esc_sweep.role"] == "fold"
        val_acc = _steps(client, child.info.run_id, "val_acc")
        assert [step for step, _ in val_acc] == [1, 2, 3]  # one point per epoch
        assert [v for _, v in val_acc] == pytest.approx([h["val_acc"] for h in record["history"]], rel=1e-6)
        for key in ("train_loss", "train_acc", "val_loss", "val_f1", "gap", "lr"):
            assert [s for s, _ in _steps(client, child.info.run_id, key)] == [1, 2, 3], key
        assert child.data.metrics["final_val_acc"] == pytest.approx(record["val_acc"], rel=1e-6)
        assert child.data.metrics["final_gap"] == pytest.approx(record["gap"], rel=1e-6, abs=1e-9)
        files = _artifacts(client, child.info.run_id)
        assert {f"figures/confusion_fold{record['fold']}.png", "figures/learning_curve.png", "results.json"} <= set(files)
        logged = json.loads(Path(client.download_artifacts(child.info.run_id, "results.json", str(tmp_path))).read_text())
        assert logged["val_acc"] == pytest.approx(record["val_acc"])

    files = _artifacts(client, parent.info.run_id)
    assert {"figures/confusion_pooled.png", "figures/folds/confusion_fold1.png", "figures/folds/confusion_fold2.png",
            "figures/folds/confusion_fold3.png", "figures/learning_curves.png", "figures/per_class_accuracy.png",
            "per_class_accuracy.json", "config.yaml", "results.json"} <= set(files)
    width, height = _png_size(Path(client.download_artifacts(parent.info.run_id, "figures/confusion_pooled.png",
                                                             str(tmp_path))))
    assert width >= 400 and height >= 400

    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "per_class_accuracy.json",
                                                      str(tmp_path))).read_text())
    rows = {row[0]: row for row in table["data"]}
    assert table["columns"] == ["class", "accuracy", "correct", "clips"]
    assert sorted(rows) == sorted(results["class_names"])
    for name, accuracy in results["per_class_accuracy"].items():
        assert rows[name][1] == pytest.approx(accuracy)
    assert sum(row[3] for row in rows.values()) == 50  # 5 classes x 10 clips

    config = Path(client.download_artifacts(parent.info.run_id, "config.yaml", str(tmp_path))).read_text()
    assert "num_folds: 3" in config and "width: 8" in config

    params = parent.data.params
    assert params["dataset.num_folds"] == "3" and params["trainer.epochs"] == "3" and params["model.width"] == "8"
    assert params["optimizer.lr"] == "0.01" and params["trainer.folds"] == "[1, 2, 3]"
    assert not any(k.startswith("sweep.") and v == "None" for k, v in params.items())
    assert params["torch_version"] == torch.__version__ and params["device"] == "cpu"
    assert params["num_classes"] == "5" and params["num_clips"] == "50" and len(params["dataset_fingerprint"]) >= 8
    if (REPO / ".git").exists():
        assert len(params["git_commit"]) == 40  # the esc_sweep checkout (the tmp cwd is no repo)
    num_parameters = int(params["num_parameters"])
    assert num_parameters > 1000
    assert {c.data.params["num_parameters"] for c in children.values()} == {str(num_parameters)}
    tags = parent.data.tags
    assert (tags["model"], tags["features"], tags["augmentation"], tags["dataset"]) == (
        "baseline_cnn", "mel", "none", "synthetic")
    # What a comparison needs: data copy, classes, folds, selection protocol, recipe, comparability key.
    assert tags["esc_sweep.dataset_fingerprint"] == params["dataset_fingerprint"]
    assert tags["esc_sweep.num_classes"] == "5" and tags["esc_sweep.classes"] == ",".join(results["class_names"])
    assert tags["esc_sweep.folds"] == "1,2,3" and tags["esc_sweep.num_folds"] == "3"
    assert tags["esc_sweep.selection"] == "none" and tags["esc_sweep.recipe"] == "none"
    assert len(tags["esc_sweep.compare_key"]) == 12
    # The name leads with the accuracy and the half-width of its 95 % interval, then what tells runs apart.
    metrics = parent.data.metrics
    half = 100 * (metrics["cv_val_acc_ci95_high"] - metrics["cv_val_acc_ci95_low"]) / 2
    assert parent.info.run_name == (f"{100 * metrics['cv_val_acc_mean']:.1f} % ±{half:.1f} · "
                                    "baseline_cnn · synthetic · 3 folds · 3 ep")
    assert tags["esc_sweep.dataset_label"] == "synthetic" and tags["esc_sweep.epochs"] == "3"
    # The Dataset column (shown by default): the data, its fingerprint, and folds, epochs, selection.
    (data_input,) = parent.inputs.dataset_inputs
    assert data_input.dataset.name == "synthetic" and params["dataset_fingerprint"].startswith(data_input.dataset.digest)
    assert {t.key: t.value for t in data_input.tags}["mlflow.data.context"] == "3 folds · 3 ep · selection none"
    # The landing view saved on the experiment: sorted by mean accuracy, with the interval's columns.
    view = json.loads(client.get_experiment(parent.info.experiment_id).tags["mlflow.sharedViewState.esc_sweep"])
    assert view["orderByKey"] == "metrics.`cv_val_acc_mean`" and view["orderByAsc"] is False
    assert [r.info.run_id for r in client.search_runs([parent.info.experiment_id], view["searchFilter"])] == [
        parent.info.run_id]  # the CV run, not its folds
    assert {"metrics.`cv_val_acc_mean`", "metrics.`cv_val_acc_ci95_low`", "metrics.`cv_val_acc_ci95_high`",
            "tags.`esc_sweep.dataset_label`", "tags.`esc_sweep.folds`", "tags.`esc_sweep.epochs`",
            "tags.`esc_sweep.selection`"} <= set(view["selectedColumns"])
    assert {c.data.tags["esc_sweep.compare_key"] for c in children.values()} == {tags["esc_sweep.compare_key"]}
    # Per-fold values on the CV run, step = fold number, beside their mean.
    for key in ("val_acc", "train_acc", "gap", "val_f1"):
        points = _steps(client, parent.info.run_id, key)
        assert [step for step, _ in points] == [1, 2, 3], key
        assert [v for _, v in points] == pytest.approx([f[key] for f in results["folds"]], rel=1e-6, abs=1e-9), key
    # Logged rounded for display (7 significant digits).
    # (system/* are MLflow's own sampler's CPU and memory readings, logged as MLflow computes them.)
    ours = {k: v for k, v in parent.data.metrics.items() if not k.startswith("system/")}
    assert ours and all(v == float(f"{v:.7g}") for v in ours.values())
    # A readable 50-class view and the most confused pairs.
    assert {"figures/confusion_pooled.html", "most_confused_pairs.json", "most_confused_pairs.md"} <= set(files)
    page = Path(client.download_artifacts(parent.info.run_id, "figures/confusion_pooled.html", str(tmp_path)))
    assert page.read_text().count("<td ") == 25 and 'title="true class_0, predicted class_0' in page.read_text()
    pairs = json.loads(Path(client.download_artifacts(parent.info.run_id, "most_confused_pairs.json",
                                                      str(tmp_path))).read_text())
    pooled = np.array(results["pooled_confusion"])
    off_diagonal = sorted((pooled - np.diag(np.diag(pooled))).ravel().tolist(), reverse=True)
    assert [p["count"] for p in pairs["pairs"]] == [c for c in off_diagonal if c][:20]
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs table


def test_runs_command_lists_the_run_from_the_default_store(default_store_run):
    cwd, uri = default_store_run
    (parent,) = _cv_runs(MlflowClient(uri))
    out = run_cli(["runs"], cwd=cwd, env={"MLFLOW_TRACKING_URI": None}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = [line for line in out.stdout.splitlines() if parent.info.run_id[:8] in line]
    metrics = parent.data.metrics
    low, high = metrics["cv_val_acc_ci95_low"], metrics["cv_val_acc_ci95_high"]
    # The logged 95 % interval beside the mean; the folds are in the table's heading, shared by its runs.
    assert "│ 1 │ baseline_cnn │ mel" in row and f"{metrics['cv_val_acc_mean']:.1%} [{100 * low:.1f}, {100 * high:.1f}]" in row
    assert "folds 1,2,3 · selection none" in out.stdout
    assert f"key {parent.data.tags['esc_sweep.compare_key']}" in out.stdout


def test_readme_snippet_ranks_the_runs_comparable_with_the_latest(default_store_run):
    """The README's Python snippet, as it stands, run in the training folder."""
    cwd, uri = default_store_run
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Tracking with MLflow"):]
    section = section[: section.index("\n## ", 1)]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "esc_sweep.compare_key" in code
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (parent,) = _cv_runs(MlflowClient(uri))
    (header, row) = out.stdout.strip().splitlines()
    assert header.split()[:4] == ["tags.model", "tags.features", "tags.esc_sweep.folds", "tags.esc_sweep.selection"]
    assert row.split()[:4] == ["baseline_cnn", "mel", "1,2,3", "none"]
    assert float(row.split()[5]) == pytest.approx(parent.data.metrics["cv_val_acc_mean"], abs=1e-6)


def test_default_store_lives_under_mlruns_with_weights(default_store_run, tmp_path):
    cwd, uri = default_store_run
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("esc_sweep")
    assert experiment.artifact_location == (cwd / "mlruns" / "artifacts").as_uri()
    (parent,) = _cv_runs(client)
    fold1 = _children(client, parent.info.run_id)[1]
    assert (cwd / "mlruns" / "artifacts" / parent.info.run_id / "artifacts" / "figures" / "confusion_pooled.png").is_file()
    # tracking.log_models=true: each fold's weights, loadable into a fresh model.
    weights = Path(client.download_artifacts(fold1.info.run_id, "model/state_dict.pt", str(tmp_path)))
    state = torch.load(weights, weights_only=True)
    assert sum(v.numel() for k, v in state.items() if "num_batches" not in k and "standardize" not in k) > 1000
    info = json.loads(Path(client.download_artifacts(fold1.info.run_id, "model/info.json", str(tmp_path))).read_text())
    assert info["fold"] == 1 and info["class_names"] == [f"class_{i}" for i in range(5)]


def test_readme_ui_command_serves_the_runs(default_store_run):
    """`mlflow ui` exactly as the README says, in the training folder, serves runs and figures."""
    cwd, uri = default_store_run
    docs = [p for p in (REPO / "README.md", REPO / "docs" / "tracking.md") if p.exists()]
    lines = [l.strip() for p in docs for l in p.read_text().splitlines()]
    command = shlex.split(next(l for l in lines if l.startswith("mlflow ui ")), comments=True)
    port = _free_port()
    proc = _start_server([MLFLOW, *command[1:], "--host", "127.0.0.1", "--port", str(port)], cwd, port)
    try:
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        experiment = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "esc_sweep"},
                                  timeout=30).json()["experiment"]
        found = requests.post(f"{api}/runs/search", json={"experiment_ids": [experiment["experiment_id"]]},
                              timeout=30).json()["runs"]
        by_role = {}
        for run in found:
            tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
            by_role.setdefault(tags["esc_sweep.role"], []).append((run, tags))
        assert len(by_role["cv"]) == 1 and len(by_role["fold"]) == 3
        parent, _ = by_role["cv"][0]
        parent_id = parent["info"]["run_id"]
        assert all(tags["mlflow.parentRunId"] == parent_id for _, tags in by_role["fold"])
        metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
        assert metrics["cv_val_acc_mean"] == pytest.approx(_results(cwd)["summary"]["cv_val_acc_mean"], rel=1e-6)
        # The figures are served to the UI too.
        listing = requests.get(f"{api}/artifacts/list", params={"run_id": parent_id, "path": "figures"},
                               timeout=30).json()
        assert "figures/confusion_pooled.png" in {f["path"] for f in listing["files"]}
        png = requests.get(f"http://127.0.0.1:{port}/get-artifact",
                           params={"run_uuid": parent_id, "path": "figures/confusion_pooled.png"}, timeout=30)
        assert png.ok and png.content[:4] == b"\x89PNG"
        fold = by_role["fold"][0][0]["info"]["run_id"]
        history = requests.get(f"{api}/metrics/get-history", params={"run_id": fold, "metric_key": "val_acc"},
                               timeout=30).json()["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2, 3]
    finally:
        _stop_server(proc)


# --------------------------------------------------------------------------
# Status: KILLED on Ctrl-C, FAILED on a crash


def _ctrl_c_once(args: list[str], cwd: Path, *steps) -> list:
    """Run the CLI in ``cwd`` and press Ctrl-C once every step, in turn, has returned a value.

    A step is called with the values of the steps before it; returns all the values.
    """
    found: list = []

    def ready() -> bool:
        while len(found) < len(steps):
            try:
                value = steps[len(found)](*found)
            except Exception:  # the store may not exist yet or be mid-write
                value = None
            if not value:
                return False
            found.append(value)
        return True

    stopped = interrupt_cli(args, cwd, signal.SIGINT, until=ready, env=clean_env(), timeout=240)
    assert stopped.returncode != 0, stopped.output[-2000:]
    return found


def _parent_id_from_state(cwd: Path) -> str | None:
    for state in (cwd / "checkpoints").glob("*/state.json"):
        return json.loads(state.read_text()).get("mlflow_parent_run_id")
    return None


def _fold_run_with_epochs(client: MlflowClient, parent_id: str, fold: int) -> str | None:
    run = _children(client, parent_id).get(fold)
    if run is not None and client.get_metric_history(run.info.run_id, "val_acc"):
        return run.info.run_id
    return None


def test_ctrl_c_marks_parent_and_fold_run_killed(tmp_path):
    store = functools.cache(lambda: MlflowClient(_sqlite_uri(tmp_path)))  # a client once the run made the store
    parent_id, _ = _ctrl_c_once(_cli(tmp_path, "trainer.epochs=50", *SLOWER), tmp_path,
                                lambda: _parent_id_from_state(tmp_path),
                                lambda parent: _fold_run_with_epochs(store(), parent, 1))
    client = store()

    runs = _runs(client)
    assert {r.info.run_id for r in runs} >= {parent_id}
    # The CV run, fold 1 and the CV run's "system metrics" child, all KILLED.
    assert sorted(r.data.tags["esc_sweep.role"] for r in runs) == ["cv", "fold", "system"], [
        (r.info.run_name, r.info.status) for r in runs]
    assert {r.info.status for r in runs} == {"KILLED"}
    assert all(r.info.end_time for r in runs)


def test_training_error_marks_runs_failed(tmp_path):
    # A huge learning rate blows the weights up in the first steps: the training loss of epoch 1 was
    # measured before that, its evaluation losses after. A NaN anywhere fails the run, at epoch 1.
    out = run_cli(_cli(tmp_path, "trainer.epochs=3", "optimizer.lr=1e30"), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": None})
    assert out.returncode == 2, out.stderr[-3000:]
    assert "validation loss is nan" in out.stdout + out.stderr
    client = MlflowClient(_sqlite_uri(tmp_path))
    runs = _runs(client)
    assert sorted(r.data.tags["esc_sweep.role"] for r in runs) == ["cv", "fold", "system"]
    assert {r.info.status for r in runs} == {"FAILED"}
    for run in [r for r in runs if r.data.tags["esc_sweep.role"] != "system"]:
        assert run.data.tags["esc_sweep.error"].startswith("NonFiniteLossError: fold 1, epoch 1")
    (fold,) = [r for r in runs if r.data.tags["esc_sweep.role"] == "fold"]
    assert _steps(client, fold.info.run_id, "val_acc") == []  # the NaN epoch never reached the curves


# --------------------------------------------------------------------------
# Resuming an interrupted run


def test_resumed_run_continues_the_same_parent_without_duplicate_folds(tmp_path):
    args = _cli(tmp_path, "trainer.epochs=6", *SLOWER, folds=2)
    store = functools.cache(lambda: MlflowClient(_sqlite_uri(tmp_path)))  # a client once the run made the store
    parent_id, killed_fold2 = _ctrl_c_once(args, tmp_path, lambda: _parent_id_from_state(tmp_path),
                                           lambda parent: _fold_run_with_epochs(store(), parent, 2))
    client = store()
    fold1_id = _children(client, parent_id)[1].info.run_id

    _run(args, tmp_path)  # the same command again: fold 1 comes from its checkpoint

    (parent,) = _cv_runs(client)
    assert parent.info.run_id == parent_id and parent.info.status == "FINISHED"
    assert parent.data.tags["esc_sweep.resumed"] == "true"
    children = _children(client, parent_id)
    assert sorted(children) == [1, 2]
    assert children[1].info.run_id == fold1_id  # not logged twice
    assert {c.info.status for c in children.values()} == {"FINISHED"}
    for child in children.values():
        assert [s for s, _ in _steps(client, child.info.run_id, "val_acc")] == list(range(1, 7))
    # The interrupted attempt at fold 2 is deleted, not left next to the new one.
    deleted = _children(client, parent_id, ViewType.DELETED_ONLY)
    assert {f: r.info.run_id for f, r in deleted.items()} == {2: killed_fold2}
    results = _results(tmp_path)
    assert parent.data.metrics["cv_val_acc_mean"] == pytest.approx(results["summary"]["cv_val_acc_mean"], rel=1e-6)


def test_fold_trained_without_tracking_is_logged_from_its_checkpoint(tmp_path):
    args = _cli(tmp_path, "trainer.epochs=6", *SLOWER, folds=2)
    (checkpoint,) = _ctrl_c_once(args + ["tracking.enabled=false"], tmp_path,
                                 lambda: next((tmp_path / "checkpoints").glob("*/fold_1.json"), None))
    assert not (tmp_path / "mlruns").exists()

    _run(args, tmp_path)

    client = MlflowClient(_sqlite_uri(tmp_path))
    (parent,) = _cv_runs(client)
    children = _children(client, parent.info.run_id)
    assert sorted(children) == [1, 2] and {c.info.status for c in children.values()} == {"FINISHED"}
    assert children[1].data.tags.get("esc_sweep.from_checkpoint") == "true"
    assert "esc_sweep.from_checkpoint" not in children[2].data.tags
    saved = json.loads(checkpoint.read_text())
    history = _steps(client, children[1].info.run_id, "val_acc")
    assert [step for step, _ in history] == [h["epoch"] for h in saved["history"]] == list(range(1, 7))
    assert [value for _, value in history] == pytest.approx([h["val_acc"] for h in saved["history"]], rel=1e-6)
    assert children[1].data.metrics["final_val_acc"] == pytest.approx(saved["val_acc"], rel=1e-6)
    assert "figures/confusion_fold1.png" in _artifacts(client, children[1].info.run_id)


# --------------------------------------------------------------------------
# Sweeps: the study's parent run and trials nested under it


def test_study_run_is_reused_and_trials_nest_under_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_config(FAST_SYNTHETIC)
    study = get_or_create_study_run(cfg, "study 'a'")
    assert get_or_create_study_run(cfg, "study 'a'") == study  # a resumed sweep gets it back
    other = get_or_create_study_run(cfg, "study-b")
    assert other != study

    _run(FAST_SYNTHETIC + [f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}", "trainer.folds=[1]",
                           "trainer.epochs=1", f"sweep.parent_run_id={study}", "sweep.trial_number=4",
                           "sweep.study_name=study-a"], tmp_path)
    client = MlflowClient(_sqlite_uri(tmp_path))
    (trial,) = _cv_runs(client)
    assert trial.data.tags["mlflow.parentRunId"] == study
    assert trial.data.tags["esc_sweep.trial"] == "4" and trial.info.run_name.startswith("trial-4-")
    assert list(_children(client, trial.info.run_id)) == [1]
    assert [r.info.run_id for r in _runs(client, f"tags.mlflow.parentRunId = '{study}'")] == [trial.info.run_id]

    report = figures.per_class_accuracy_figure({"a": 0.5, "b": 1.0})
    extra = tmp_path / "best.yaml"
    extra.write_text("optimizer:\n  lr: 0.01\n")
    log_study_report(study, {"optimization_history": report}, {"best_value": 0.75}, [extra],
                     objectives=["mean_inner_acc", "num_parameters"])
    run = client.get_run(study)
    assert run.info.status == "FINISHED" and run.data.metrics["best_value"] == 0.75
    assert run.data.tags["esc_sweep.objective"] == "mean_inner_acc, num_parameters"  # what best_value is
    assert set(_artifacts(client, study)) == {"figures/optimization_history.png", "best.yaml"}
    assert get_or_create_study_run(cfg, "study 'a'") == study
    assert client.get_run(study).info.status == "RUNNING"  # resumed
    end_study_run(study, "KILLED")
    assert client.get_run(study).info.status == "KILLED"


def test_unreachable_server_is_one_clear_error(tmp_path):
    port = _free_port()  # nothing listens there
    out = run_cli(FAST_SYNTHETIC + ["trainer.folds=[1]", "trainer.epochs=1", f"tracking.uri=http://127.0.0.1:{port}",
                                    f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}"], cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    text = out.stdout + out.stderr
    assert f"no MLflow server answers at http://127.0.0.1:{port}" in text and "Traceback" not in text


def test_store_error_found_while_training_is_one_clear_error_and_no_run_stays_open(tmp_path):
    # The CV run is opened on a background thread; its errors must still reach the user.
    uri = _sqlite_uri(tmp_path)
    (tmp_path / "mlruns").mkdir()
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("esc_sweep"))
    out = run_cli(_cli(tmp_path, "trainer.epochs=2", folds=2), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": None})
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert "MLflow experiment 'esc_sweep' was deleted" in text and "Traceback" not in text
    assert not list(tmp_path.glob("outputs/runs/*/*/results.json"))
    deleted = client.get_experiment_by_name("esc_sweep")
    assert client.search_runs([deleted.experiment_id], run_view_type=ViewType.ALL) == []


# --------------------------------------------------------------------------
# Params and figures


def test_flatten_config_gives_dotted_keys_and_skips_unset_sweep_keys():
    cfg = compose_config(FAST_SYNTHETIC + ["sweep.trial_number=3"])
    flat = flatten_config(cfg)
    assert flat["optimizer.lr"] == "0.01" and flat["model.name"] == "baseline_cnn"
    assert flat["optimizer.betas"] == "[0.9, 0.999]" and flat["model.kwargs"] == "{}"
    assert flat["sweep.trial_number"] == "3" and "sweep.parent_run_id" not in flat
    assert flat["dataset.classes"] == "None"  # unset keys outside sweep.* are kept


def test_confusion_figure_is_row_normalised_with_all_class_names():
    names = [f"class_{i:02d}" for i in range(50)]
    counts = np.eye(50, dtype=int) * 30 + 1  # 80 clips per class, 31 right
    counts[0] = 0
    counts[0, 1] = 8  # class 0: all wrong
    fig = figures.confusion_matrix_figure(counts.tolist(), names, "pooled")
    ax = fig.axes[0]
    image = ax.images[0].get_array()
    np.testing.assert_allclose(image.sum(axis=1), 1.0)
    assert image[0, 1] == 1.0 and image[5, 5] == pytest.approx(31 / 80)
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert "pooled" in ax.get_title()
    width, height = fig.get_size_inches() * fig.dpi
    assert width / 50 >= 15 and height / 50 >= 15  # at least 15 px per class


def test_learning_curve_figure_shades_the_gap():
    history = [{"epoch": e, "train_acc": 0.5 + 0.1 * e, "val_acc": 0.5, "train_loss": 1 / e, "val_loss": 1.0}
               for e in range(1, 5)]
    fig = figures.learning_curve_figure({1: history, 2: history})
    acc, loss = fig.axes
    assert acc.collections, "the gap is not shaded"
    (gap,) = acc.collections
    top = gap.get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(0.9)  # train accuracy at epoch 4
    assert "+40.0%" in acc.get_title()
    mean_train = [l for l in acc.get_lines() if l.get_label() == "mean train"][0]
    assert list(mean_train.get_ydata()) == pytest.approx([0.6, 0.7, 0.8, 0.9])
    assert len(loss.get_lines()) == 6  # 2 folds x (train, val) + 2 means


def test_per_class_accuracy_figure_sorts_worst_first():
    fig = figures.per_class_accuracy_figure({"dog": 0.9, "rain": 0.2, "clock_tick": 0.6})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    widths = [p.get_width() for p in ax.patches]
    assert labels == ["rain", "clock_tick", "dog"] and widths == pytest.approx([0.2, 0.6, 0.9])
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # inverted: the first (worst) bar on top
