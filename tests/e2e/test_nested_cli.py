"""``esc-sweep nested`` through the real CLI on tiny synthetic data: per outer fold an
inner-validated search and a refit scored once; resumable; the plan first; MLflow nesting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO
from tests.sweep.test_sweep import TINY

ENV = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
# The folds come from --outer-folds; the rest of TINY's settings stay fixed in every outer fold.
ARGS = ["hparams_search=esc50_optuna", *[a for a in TINY if not a.startswith("trainer.folds")],
        "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.name=none", "optimizer.lr=interval(0.003,0.05)",
        "model.dropout=0.1", "trainer.num_threads=1"]


def nested(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esc_sweep", "nested", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=900)


def test_nested_cv_searches_inside_each_outer_fold_and_scores_the_refit_once(tmp_path):
    plan = nested(tmp_path, "--plan", "--outer-folds", "1,2", *ARGS)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "2 outer folds x (2 trials + 1 refit) = 6 trainings" in " ".join(plan.stdout.split())
    assert not (tmp_path / "outputs" / "nested").exists()  # --plan runs nothing

    out = nested(tmp_path, "--outer-folds", "1,2", "--name", "tiny", *ARGS)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    state = json.loads((tmp_path / "outputs" / "nested" / "tiny" / "nested.json").read_text())
    assert sorted(state["folds"]) == ["1", "2"]
    storage = f"sqlite:///{tmp_path / 'outputs' / 'nested' / 'tiny' / 'studies.db'}"
    for fold in (1, 2):
        record = state["folds"][str(fold)]
        study = optuna.load_study(study_name=f"nested-tiny-outer{fold}", storage=storage)
        # The inner search ran on the other folds with the inner split deciding; its winner was refitted.
        identity = study.user_attrs["esc_sweep.objective_identity"]
        assert identity["trainer.folds"] == [fold] and identity["trainer.validation"] == "inner"
        assert record["best_trial"] == study.best_trial.number and record["inner_value"] == study.best_value
        refit = json.loads((tmp_path / "outputs" / "nested" / "tiny" / f"outer{fold}" / "refit" /
                            "results.json").read_text())
        assert refit["validation"] == "none" and [f["fold"] for f in refit["folds"]] == [fold]
        assert record["outer_val_acc"] == refit["folds"][0]["val_acc"]
        assert record["best_params"]["optimizer.lr"] == pytest.approx(study.best_params["optimizer.lr"])
    summary = state["summary"]
    outer = [state["folds"][k]["outer_val_acc"] for k in ("1", "2")]
    assert summary["nested_val_acc_mean"] == pytest.approx(sum(outer) / 2)
    assert "nested estimate" in out.stdout

    # MLflow: the nested run holds the outer scores, with each outer fold's study run and refit below it.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get("esc_sweep.role") == "nested"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["outer_fold_1_val_acc"] == pytest.approx(outer[0], abs=1e-6)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags.get("esc_sweep.role") for r in children) == ["cv", "cv", "study", "study"]

    # The same command again: everything is done, nothing is trained again.
    again = nested(tmp_path, "--outer-folds", "1,2", "--name", "tiny", *ARGS)
    assert again.returncode == 0 and "resuming: outer folds [1, 2] done" in " ".join(again.stdout.split())
    assert "inner search" not in again.stdout.split("resuming")[1]


def test_keys_the_procedure_sets_are_refused_in_one_line(tmp_path):
    out = nested(tmp_path, *ARGS, "trainer.validation=test_fold")
    assert out.returncode == 2
    assert (out.stdout + out.stderr).strip() == (
        "error: nested: trainer.validation cannot be set: the nested procedure sets them per outer fold "
        "(choose the outer folds with --outer-folds)")
    out = nested(tmp_path, "dataset=synthetic")
    assert out.returncode == 2 and "hparams_search=NAME is required" in out.stdout + out.stderr
