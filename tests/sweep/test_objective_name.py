"""The objective's name says what it averages under each trainer.validation, and studies recorded
under the old name (every objective was "mean_val_acc") keep their study name and resume."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution

from esc_sweep.sweep.identity import (
    SPACE_ATTR, check_space, default_study_name, objective_name, rename_objectives, space_record, study_for,
)
from esc_sweep.sweep.messages import SweepError

LR = {"optimizer.lr": FloatDistribution(0.003, 0.05, log=True)}


@pytest.mark.parametrize(("validation", "searched", "metric", "name"), [
    ("none", False, "acc", "mean_val_acc"), ("test_fold", False, "acc", "mean_val_acc"),
    ("inner", False, "acc", "mean_inner_acc"), ("inner", True, "acc", "mean_inner_or_val_acc"),
    ("none", True, "acc", "mean_inner_or_val_acc"), ("none", False, "map3", "mean_val_map3"),
    ("inner", False, "map3", "mean_inner_map3"),
])
def test_the_objective_is_named_for_what_it_averages(validation, searched, metric, name):
    assert objective_name(validation, searched, metric) == name


def _study(space, storage=None):
    study = optuna.create_study(study_name="s", storage=storage or optuna.storages.InMemoryStorage(),
                                direction="maximize")
    study.set_user_attr(SPACE_ATTR, space)
    return study


def test_a_study_recorded_under_the_old_name_keeps_its_name_and_resumes_renamed():
    old = space_record(LR, ["maximize"], ["mean_val_acc", "num_parameters"], None)
    new = space_record(LR, ["maximize"], ["mean_inner_acc", "num_parameters"], None)
    assert default_study_name(new, "esc50_optuna") == default_study_name(old, "esc50_optuna")
    storage = optuna.storages.InMemoryStorage()
    study = _study(old, storage)
    assert study_for(storage, "s", new, {"k": 1}, "here") == "s"  # made before settings were recorded
    check_space(study, new, LR, "here")  # not refused
    assert study.user_attrs[SPACE_ATTR] == old  # unchanged until every check passed
    rename_objectives(study, new)
    assert study.user_attrs[SPACE_ATTR]["objectives"] == ["mean_inner_acc", "num_parameters"]


def test_other_objectives_are_still_another_search():
    study = _study(space_record(LR, ["maximize"], ["mean_val_acc"], None))
    new = space_record(LR, ["maximize"], ["mean_inner_acc", "num_parameters"], None)
    with pytest.raises(SweepError, match=r"objectives \['mean_val_acc'\] -> \['mean_inner_acc', 'num_parameters'\]"):
        check_space(study, new, LR, "here")
    assert default_study_name(new, "x") != default_study_name(space_record(LR, ["maximize"], ["loss"], None), "x")


def test_a_sweep_with_the_inner_split_names_its_objective_so_everywhere(tmp_path):
    from omegaconf import OmegaConf

    from tests.conftest import run_cli
    from tests.sweep.test_sweep import ENV, load, sweep_args

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = sweep_args(tmp_path, "esc50_optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.pruner.name=none",
                      "optimizer.lr=interval(0.003,0.05)", "model.dropout=0.1", "trainer.folds=[1]",
                      "trainer.epochs=1", "trainer.validation=inner", "tracking=none",
                      f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=inner")
    out = run_cli(args, tmp_path, env={"PYTHONPATH": ENV["PYTHONPATH"], "MLFLOW_TRACKING_URI": None}, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study = load(storage, "inner")
    assert study.metric_names == ["mean_inner_acc"]
    assert study.user_attrs[SPACE_ATTR]["objectives"] == ["mean_inner_acc"]
    logs = out.stdout + out.stderr
    assert "trial 0 COMPLETE: mean_inner_acc " in logs and f"mean_inner_acc {study.best_value:.4f}" in logs
    assert OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml").objectives == ["mean_inner_acc"]
