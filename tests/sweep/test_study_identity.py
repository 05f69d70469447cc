"""A study is bound to what its objective means: the data, the protocol and the fixed settings
of the command. Re-running a search on other data starts another study; an explicit study name
with other settings is refused in one line; a study from before this record keeps working.
The study report says which trials are within noise of the best."""

from __future__ import annotations

import types

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from esc_sweep.errors import ConfigError
from esc_sweep.sweep.identity import DATA_FINGERPRINT_ATTR, IDENTITY_ATTR, describe_differences, objective_identity
from esc_sweep.sweep.report import importances, noise_sentence, within_noise_of_best
from esc_sweep.sweep.reporter import TrialReporter
from tests.conftest import compose_config
from tests.sweep.test_sweep import load, reporter_cfg, run_sweep, sweep_args

ONE = ["hydra.sweeper.n_trials=1", "hydra.sweeper.pruner.name=none", "optimizer.lr=interval(0.003,0.05)",
       "model.dropout=0.1"]


def _error_line(out) -> str:
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stdout[-2000:] + out.stderr[-3000:]
    return lines[0]


def test_other_data_gets_its_own_study_and_an_explicit_name_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = [*ONE, f"hydra.sweeper.storage={storage}"]
    run_sweep(sweep_args(tmp_path, "esc50_optuna", *common), tmp_path)
    first = load(storage, "esc50_optuna")
    assert first.user_attrs[IDENTITY_ATTR]["dataset.num_classes"] == 3
    assert len(first.user_attrs[DATA_FINGERPRINT_ATTR]) == 16

    # The same search on other data (4 classes): not the old study.
    out = run_sweep(sweep_args(tmp_path, "esc50_optuna", *common, "dataset.num_classes=4"), tmp_path)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert len(names) == 2 and names[0] == "esc50_optuna" and names[1].startswith("esc50_optuna-")
    assert len(load(storage, "esc50_optuna").trials) == 1  # the old study was not joined
    assert len(load(storage, names[1]).trials) == 1
    assert names[1] in out.stdout + out.stderr

    # The same command again resumes its own study (n_trials=2 in all: one more trial there).
    run_sweep(sweep_args(tmp_path, "esc50_optuna", *common, "dataset.num_classes=4", "hydra.sweeper.n_trials=2"),
              tmp_path)
    assert len(load(storage, names[1]).trials) == 2 and len(load(storage, "esc50_optuna").trials) == 1

    # Naming the old study explicitly with other data and protocol: one line naming the keys, exit 2.
    out = run_sweep(sweep_args(tmp_path, "esc50_optuna", *common, "dataset.num_classes=4",
                               "trainer.validation=inner", "hydra.sweeper.study_name=esc50_optuna"),
                    tmp_path, expect_ok=False)
    assert out.returncode == 2
    line = _error_line(out)
    assert line.startswith("error: study 'esc50_optuna' in ") and "was run with other settings" in line
    assert "dataset.num_classes (3 -> 4)" in line and "trainer.validation (none -> inner)" in line
    assert len(load(storage, "esc50_optuna").trials) == 1


def test_a_study_from_before_the_record_is_resumed_and_gets_one(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    legacy = optuna.create_study(study_name="old_study", storage=storage, direction="maximize")
    legacy.add_trial(optuna.trial.create_trial(params={"optimizer.lr": 0.01}, value=0.5,
                                               distributions={"optimizer.lr": FloatDistribution(0.003, 0.05)}))
    out = run_sweep(sweep_args(tmp_path, "esc50_optuna", *ONE, f"hydra.sweeper.storage={storage}",
                               "hydra.sweeper.study_name=old_study", "hydra.sweeper.n_trials=2"), tmp_path)
    study = load(storage, "old_study")
    assert len(study.trials) == 2 and IDENTITY_ATTR in study.user_attrs
    assert "earlier esc_sweep" in out.stdout + out.stderr


def test_the_identity_leaves_out_searched_and_neutral_keys():
    cfg = compose_config(["dataset=synthetic", "trainer.epochs=2"], )
    identity = objective_identity(cfg, ["optimizer.lr", "model"])
    assert identity["trainer.epochs"] == 2 and identity["dataset.kind"] == "synthetic"
    assert "optimizer.lr" not in identity and not any(k.startswith("model.") for k in identity)
    assert not any(k.startswith(("tracking.", "sweep.")) for k in identity)
    assert "trainer.progress" not in identity and "trainer.num_threads" not in identity
    assert identity["data.root"] == "none"
    other = objective_identity(compose_config(["dataset=synthetic", "trainer.epochs=3", "trainer.folds=[1]"]),
                               ["optimizer.lr", "model"])
    text = describe_differences(identity, other)
    assert text.index("trainer.folds") < text.index("trainer.epochs")  # the data and protocol first


def test_a_trial_that_reads_other_data_than_the_study_fails(tmp_path):
    storage = f"sqlite:///{tmp_path / 'unit.db'}"
    study = optuna.create_study(study_name="unit", storage=storage, direction="maximize")
    study.set_user_attr(DATA_FINGERPRINT_ATTR, "0123456789abcdef")
    trial = study.ask()
    reporter = TrialReporter(reporter_cfg(tmp_path, trial.number, False))
    clips = types.SimpleNamespace(fingerprint="fedcba9876543210", folds=torch.tensor([1, 2, 3]))
    with pytest.raises(ConfigError, match="the data changed: .*0123456789abcdef.*fedcba9876543210"):
        reporter.on_cv_start({"clips": clips})
    clips.fingerprint = "0123456789abcdef"
    reporter.on_cv_start({"clips": clips})  # the same data: fine
    assert study.trials[-1].user_attrs["dataset_folds"] == 3


def _study_with(values: dict[int, dict[str, float]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for number, folds in values.items():
        study.add_trial(optuna.trial.create_trial(
            params={"x": float(number)}, distributions={"x": FloatDistribution(0, 100)},
            value=sum(folds.values()) / len(folds), state=TrialState.COMPLETE,
            user_attrs={"fold_values": folds, "dataset_folds": 5}))
    return study


def test_the_report_names_trials_within_noise_of_the_best():
    best = {"r0f1": 0.80, "r0f2": 0.78, "r0f3": 0.75, "r0f4": 0.85, "r0f5": 0.72}
    close = {k: v - 0.005 + (0.01 if k in ("r0f2", "r0f4") else 0) for k, v in best.items()}  # within ±1 point
    far = {k: v - 0.30 + 0.002 * i for i, (k, v) in enumerate(best.items())}  # 30 points worse on every fold
    study = _study_with({0: far, 1: best, 2: close})
    noise = within_noise_of_best(study, study.best_trial)
    assert study.best_trial.number == 1
    assert noise["within"] == [2] and noise["distinct"] == [0] and noise["reason"] is None
    sentence = noise_sentence(study.best_trial, noise)
    assert sentence.startswith("best: trial 1, 78.0 %; trial 2 within noise")

    one_fold = _study_with({0: {"r0f1": 0.5}, 1: {"r0f1": 0.6}})
    noise = within_noise_of_best(one_fold, one_fold.best_trial)
    assert noise["unknown"] == [0] and "one fold per trial" in noise_sentence(one_fold.best_trial, noise)


def test_importances_need_ten_complete_trials():
    folds = {f"r0f{k}": 0.5 for k in range(1, 6)}
    few = _study_with({n: {k: v + 0.01 * n for k, v in folds.items()} for n in range(9)})
    assert importances(few, ["maximize"]) == {}
    enough = _study_with({n: {k: v + 0.01 * n for k, v in folds.items()} for n in range(10)})
    assert set(importances(enough, ["maximize"])) == {"x"}
