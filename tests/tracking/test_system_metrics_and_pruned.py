"""System metrics (CPU, memory, ...) on MLflow runs, and pruned sweep trials marked pruned, not failed.

Everything is read back from a real SQLite MLflow store.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from mlflow import MlflowClient
from rich.console import Console

from esc_sweep.app.runs import group_table
from esc_sweep.tracking.client import NOTE_TAG, PRUNED_TAG, ROLE_TAG, STATUS_TAG
from esc_sweep.tracking.cv_run import MlflowTracker
from esc_sweep.tracking.runs_table import comparable_groups, finished_cv_runs
from esc_sweep.tracking.system_metrics import start_system_metrics
from tests.conftest import FAST_SYNTHETIC, compose_config, run_cli

CPU = "system/cpu_utilization_percentage"
MEMORY = "system/system_memory_usage_megabytes"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, MlflowClient]:
    """One SQLite store for the module: creating one (its migrations) takes seconds."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.search_experiments()  # creates the database
    return uri, client


def _new_run(client: MlflowClient) -> str:
    experiment = client.create_experiment(f"e{time.monotonic_ns()}")
    return client.create_run(experiment).info.run_id


# --------------------------------------------------------------------------
# System metrics


def test_system_metrics_sampler_logs_cpu_and_memory_even_for_a_short_run(store):
    uri, client = store
    run_id = _new_run(client)
    sampler = start_system_metrics(run_id, uri, enabled=True)  # 10 s interval: a short run ends first
    sum(i * i for i in range(300_000))  # some CPU work
    started = time.monotonic()
    sampler.stop()
    assert time.monotonic() - started < 5.0, "stopping must not wait for the sampling interval"
    metrics = client.get_run(run_id).data.metrics
    assert 0.0 <= metrics[CPU] <= 100.0 * max(1, torch.get_num_threads())
    assert metrics[MEMORY] > 0
    assert [m.step for m in client.get_metric_history(run_id, CPU)] == [0]


def test_system_metrics_off_logs_nothing(store):
    uri, client = store
    run_id = _new_run(client)
    assert start_system_metrics(run_id, uri, enabled=False) is None
    assert not client.get_run(run_id).data.metrics


@pytest.mark.parametrize("enabled", [True, False])
def test_the_cv_runs_system_metrics_child_gets_them_unless_tracking_system_metrics_is_false(store, enabled):
    uri, client = store
    tracker = _tracker(uri, f"tracking.system_metrics={str(enabled).lower()}")
    tracker.on_exception(KeyboardInterrupt())  # ends the runs (and the sampler) like Ctrl-C
    parent = client.get_run(tracker.parent_run_id)
    # The CV run's own metrics never start with system/: MLflow's compare page plots a run's first metric.
    assert not [k for k in parent.data.metrics if k.startswith("system/")]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    system_runs = [r for r in children if r.data.tags.get(ROLE_TAG) == "system"]
    if enabled:
        (system_run,) = system_runs
        # It ends as its CV run ends (here killed, like Ctrl-C).
        assert system_run.info.run_name == "system metrics" and system_run.info.status == "KILLED"
        assert {CPU, MEMORY} <= set(system_run.data.metrics), system_run.data.metrics
    else:
        assert system_runs == []


@pytest.mark.slow
def test_cli_run_has_system_metrics_by_default(tmp_path):
    args = FAST_SYNTHETIC + ["trainer.epochs=1", "dataset.num_folds=2", "trainer.folds=[1]",
                             f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}"]
    out = run_cli(args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": None}, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (cv_run,) = client.search_runs([client.get_experiment_by_name("esc_sweep").experiment_id],
                                   filter_string=f"tags.`{ROLE_TAG}` = 'cv'")
    (system_run,) = client.search_runs([cv_run.info.experiment_id], filter_string=(
        f"tags.`mlflow.parentRunId` = '{cv_run.info.run_id}' and tags.`{ROLE_TAG}` = 'system'"))
    assert {CPU, MEMORY} <= set(system_run.data.metrics)
    # The CV run's first metric (what MLflow's compare page plots first) is not a system metric.
    assert not any(k.startswith("system/") for k in cv_run.data.metrics)
    assert cv_run.data.tags[STATUS_TAG] == "finished"


# --------------------------------------------------------------------------
# Pruned trials


def _tracker(uri: str, *overrides: str) -> MlflowTracker:
    cfg = compose_config(FAST_SYNTHETIC + [f"tracking.uri={uri}", *overrides])
    tracker = MlflowTracker(cfg)
    clips = SimpleNamespace(class_names=["a", "b", "c"], fingerprint="f" * 16, targets=torch.zeros(30))
    tracker.on_cv_start({"clips": clips, "device": torch.device("cpu"), "checkpoints": None})
    tracker.on_fold_start(1, {"model": None, "num_parameters": 123})
    tracker.on_epoch_end(1, 1, {"epoch": 1, "train_loss": 1.0, "val_acc": 0.1})
    return tracker


def test_a_pruned_trial_ends_finished_marked_pruned_and_is_listed_but_never_ranked(store):
    uri, client = store
    tracker = _tracker(uri)
    parent = tracker.parent_run_id
    fold_run = tracker._fold_runs[1]
    tracker.on_exception(optuna.TrialPruned("pruned after fold 1, epoch 1: mean val acc 0.1000 at step 1"))

    for run_id in (parent, fold_run):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"  # not KILLED / FAILED: nothing went wrong
        assert run.data.tags[STATUS_TAG] == "pruned" and run.data.tags[PRUNED_TAG] == "true"
        assert run.info.run_name.endswith("· pruned")
        assert "Pruned by the sweep's pruner" in run.data.tags[NOTE_TAG]
        assert "esc_sweep.error" not in run.data.tags
    assert client.get_run(fold_run).info.run_name == "fold-1 · pruned"

    # A finished, comparable run beside it (same tags, a mean accuracy): only that one is ranked.
    finished = client.create_run(client.get_run(parent).info.experiment_id,
                                 tags={k: v for k, v in client.get_run(parent).data.tags.items()
                                       if k.startswith("esc_sweep.") and k not in (STATUS_TAG, PRUNED_TAG)
                                       or k == "model"}).info.run_id
    client.log_metric(finished, "cv_val_acc_mean", 0.4)
    client.log_metric(finished, "cv_val_acc_std", 0.1)
    client.set_terminated(finished, "FINISHED")
    runs = finished_cv_runs(uri, "esc_sweep")
    by_id = {run.run_id: run for run in runs}
    assert by_id[parent].pruned and not by_id[parent].ranked
    assert by_id[finished].ranked and not by_id[finished].pruned
    (group,) = comparable_groups(runs)
    assert [run.run_id for run in group.runs] == [finished, parent]  # ranked first, pruned after

    out = Console(width=250, record=True, file=open("/dev/null", "w"))
    out.print(group_table(group))
    rows = {run_id: [cell.strip() for cell in line.split("│")[1:-1]]
            for line in out.export_text().splitlines() for run_id in (parent, finished) if run_id[:8] in line}
    # mean [95 % interval]: no interval logged, so Student t from the std over 5 folds (2.776 * 10 / sqrt(5))
    assert rows[finished][0] == "1" and "40.0% [27.6, 52.4]" in rows[finished]
    assert rows[parent][0] == "-" and "pruned" in rows[parent]


def test_ctrl_c_and_errors_still_end_killed_and_failed(store):
    uri, client = store
    interrupted = _tracker(uri)
    interrupted.on_exception(KeyboardInterrupt())
    run = client.get_run(interrupted.parent_run_id)
    assert run.info.status == "KILLED" and run.data.tags[STATUS_TAG] == "interrupted"
    assert PRUNED_TAG not in run.data.tags and not run.info.run_name.endswith("pruned")

    failed = _tracker(uri)
    failed.on_exception(RuntimeError("boom"))
    run = client.get_run(failed.parent_run_id)
    assert run.info.status == "FAILED" and run.data.tags[STATUS_TAG] == "failed"
    assert run.data.tags["esc_sweep.error"] == "RuntimeError: boom"
