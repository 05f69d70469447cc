"""Optuna sweeps through the real Hydra CLI: pruning, resume, failures, report.

Each sweep is ``python -m esc_sweep -m hparams_search=...`` in a subprocess on
tiny synthetic data (3 classes, 3 folds, a 4-channel CNN); the study is read
back from its SQLite storage with Optuna and the trials' runs from MLflow.
A few fast in-process tests cover the pieces (reporter steps, pruner names,
override quoting, the search configs).
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import OmegaConf
from optuna.trial import TrialState

from esc_sweep.errors import ConfigError
from esc_sweep.training.results import FoldResult
from esc_sweep.sweep.reporter import EPOCH_STRIDE, TrialReporter, build_pruner
from tests.conftest import REPO, compose_config

# The sweeper plugin lives in <repo>/hydra_plugins; subprocesses started in a
# tmp dir find it through PYTHONPATH (an installed package finds it anyway).
ENV = {
    **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    "PYTHONUNBUFFERED": "1",
}

# Tiny data and model; the search-space keys of esc50_optuna that these fix
# (epochs, batch size, n_mels, mixup, masks, weight decay) leave the search.
TINY = [
    "dataset=synthetic", "dataset.num_classes=3", "dataset.clips_per_class=8", "dataset.clip_seconds=0.25",
    "dataset.num_folds=3", "trainer.folds=[1,2,3]", "features.n_fft=256", "features.n_mels=16",
    "model=baseline_cnn", "model.width=4", "augmentation=none", "augmentation.mixup_alpha=0",
    "augmentation.freq_mask_width=0", "augmentation.time_mask_width=0", "optimizer.weight_decay=0",
    "trainer.epochs=3", "trainer.batch_size=4", "trainer.progress=false",
]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def sweep_args(tmp: Path, search: str, *extra: str) -> list[str]:
    return ["-m", f"hparams_search={search}", *TINY, f"trainer.checkpoint_dir={tmp / 'checkpoints'}",
            f"hydra.sweep.dir={tmp / 'sweep'}", *extra]


def run_sweep(args: list[str], cwd: Path, expect_ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "esc_sweep", *args], cwd=cwd, env=ENV, capture_output=True,
                         text=True, timeout=600)
    if expect_ok:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def states(study: optuna.Study) -> dict[TrialState, int]:
    trials = study.get_trials(deepcopy=False)
    return {s: sum(t.state == s for t in trials) for s in TrialState}


# --------------------------------------------------------------------------
# Through the CLI


def test_sweep_prunes_bad_trials_and_nests_eight_trials_under_the_study_run(tmp_path):
    """8 trials, half with a learning rate too small to learn anything: the
    median pruner stops those after their first fold; every trial is a child
    of the study's MLflow run; the report is printed and logged."""
    from mlflow import MlflowClient

    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = time.monotonic()
    out = run_sweep(sweep_args(
        tmp_path, "esc50_optuna", "optimizer.lr=choice(1e-6,0.03)", "model.dropout=interval(0.0,0.3)",
        "hydra.sweeper.n_trials=8", "hydra.sweeper.pruner.n_startup_trials=1", f"tracking.uri={mlflow_uri}",
    ), tmp_path)
    print(f"8-trial sweep: {time.monotonic() - started:.0f}s")

    # Default storage: <cwd>/outputs/optuna/<study name>.db
    storage = f"sqlite:///{tmp_path / 'outputs' / 'optuna' / 'esc50_optuna.db'}"
    study = load(storage, "esc50_optuna")
    count = states(study)
    assert count[TrialState.COMPLETE] + count[TrialState.PRUNED] == 8
    assert count[TrialState.PRUNED] >= 1
    assert count[TrialState.FAIL] == 0
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state == TrialState.PRUNED:
            # Only the hopeless learning rate is pruned, after its first fold.
            assert t.params["optimizer.lr"] == 1e-6
            assert list(t.intermediate_values) == [1]
            assert t.user_attrs["epochs_trained"] == 3
        else:
            assert list(t.intermediate_values) == [1, 2, 3]
            assert t.user_attrs["epochs_trained"] == 9
        assert t.user_attrs["num_parameters"] > 0
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert best.params["optimizer.lr"] == 0.03 and best.value > 0.6

    # One line per trial: the sampled values rounded, no internal sweep.* keys; the spread over folds.
    logs = out.stdout + out.stderr
    assert "sweep.storage=" not in logs and "sweep.trial_number=" not in logs
    assert re.search(r"trial \d+: optimizer\.lr=(1e-06|0\.03) model\.dropout=[\d.e-]{1,10}\n", logs)
    assert re.search(r"trial \d+ COMPLETE: mean_val_acc [\d.]{1,6} ± [\d.e-]{1,10} over 3 folds\n", logs)
    # The study report: printed, saved, and on the study run.
    assert "Best trial" in out.stdout and f"{count[TrialState.PRUNED]} pruned" in out.stdout
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.best_value == pytest.approx(best.value)
    assert results.best_params["optimizer.lr"] == 0.03
    assert results.n_pruned == count[TrialState.PRUNED]
    assert results.total_epochs_trained == sum(t.user_attrs["epochs_trained"] for t in trials) < 8 * 9
    # Job folders are named by trial number.
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.name.isdigit()) == [str(i) for i in range(8)]

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("esc_sweep")
    runs = client.search_runs([experiment.experiment_id])
    study_runs = [r for r in runs if r.data.tags.get("esc_sweep.role") == "study"]
    assert len(study_runs) == 1
    study_run = study_runs[0]
    assert study_run.info.run_id == study.user_attrs["mlflow_parent_run_id"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study_run.info.run_id]
    assert len(children) == 8
    assert sorted(int(r.data.tags["esc_sweep.trial"]) for r in children) == list(range(8))
    pruned_numbers = {t.number for t in trials if t.state == TrialState.PRUNED}
    # Pruned trials end FINISHED (MLflow has no PRUNED; KILLED reads as a failure), marked pruned.
    marked = {int(r.data.tags["esc_sweep.trial"]) for r in children if r.data.tags.get("esc_sweep.status") == "pruned"}
    assert marked == pruned_numbers
    assert all(r.info.status == "FINISHED" for r in children)
    assert all(r.info.run_name.endswith("· pruned") == (int(r.data.tags["esc_sweep.trial"]) in pruned_numbers)
               for r in children)
    assert study_run.info.status == "FINISHED"
    assert study_run.data.metrics["best_value"] == pytest.approx(best.value)
    assert study_run.data.metrics["n_pruned"] == count[TrialState.PRUNED]
    figures = {a.path for a in client.list_artifacts(study_run.info.run_id, "figures")}
    assert {"figures/optimization_history.png", "figures/intermediate_values.png"} <= figures
    assert "optimization_results.yaml" in {a.path for a in client.list_artifacts(study_run.info.run_id)}


def test_interrupted_sweep_resumes_and_runs_only_the_missing_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = sweep_args(tmp_path, "esc50_optuna", "optimizer.lr=0.03", "model.dropout=interval(0.0,0.3)",
                      "hydra.sweeper.n_trials=5", "hydra.sweeper.pruner.name=none", "tracking=none",
                      f"hydra.sweeper.storage={storage}")
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "esc_sweep", *args], cwd=tmp_path, env=ENV, stdout=log,
                            stderr=subprocess.STDOUT)
    # Ctrl-C once 3 trials are finished (the 4th is then under way).
    deadline = time.monotonic() + 400
    while True:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "3 trials did not finish in time"
        try:
            if sum(t.state in FINISHED for t in load(storage, "esc50_optuna").get_trials(deepcopy=False)) >= 3:
                break
        except KeyError:  # the study does not exist yet
            pass
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode != 0

    first = load(storage, "esc50_optuna").get_trials(deepcopy=False)
    done_first = sum(t.state in FINISHED for t in first)
    assert done_first in (3, 4)
    assert not [t for t in first if t.state == TrialState.RUNNING], "an interrupted trial was left RUNNING"
    for t in first:
        if t.state == TrialState.FAIL:
            # Ctrl-C usually lands in training (KeyboardInterrupt); rarely inside
            # Hydra's config code, which turns it into another error.
            assert t.user_attrs["fail_reason"].startswith(("interrupted: KeyboardInterrupt", "sweep stopped:"))

    resumed_at = datetime.datetime.now()
    out = run_sweep(args, tmp_path)  # the same command
    logs = out.stdout + out.stderr
    assert f"{done_first} of 5 trials finished" in logs
    study = load(storage, "esc50_optuna")
    trials = study.get_trials(deepcopy=False)
    assert sum(t.state in FINISHED for t in trials) == 5
    second = [t for t in trials if t.datetime_start >= resumed_at]
    assert len(second) == 5 - done_first
    assert all(t.state in FINISHED for t in second)
    assert logs.count("Launching 1 jobs locally") == 5 - done_first
    # The resumed sampler does not replay the first run's parameters.
    dropouts = [t.params["model.dropout"] for t in trials if t.state in FINISHED]
    assert len(set(dropouts)) == len(dropouts)


def test_failing_and_nan_trials_are_recorded_as_fail_and_the_sweep_completes(tmp_path):
    """A 2x2 grid: one model name that does not exist (the trial raises), one
    learning rate that makes the loss NaN. Three trials fail, with their
    reasons; the fourth completes and the sweep reports it."""
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    grid = ["optimizer.lr=choice(0.03,1e30)", "model.name=choice(baseline_cnn,not_a_model)",
            "trainer.epochs=2", "tracking=none", f"hydra.sweeper.storage={storage}"]
    out = run_sweep(sweep_args(tmp_path, "esc50_grid", *grid, "hydra.sweeper.max_failure_rate=1.0"), tmp_path)
    trials = load(storage, "esc50_grid").get_trials(deepcopy=False)
    assert len(trials) == 4
    by_params = {(t.params["optimizer.lr"], t.params["model.name"]): t for t in trials}
    ok = by_params[(0.03, "baseline_cnn")]
    assert ok.state == TrialState.COMPLETE and ok.value > 0
    nan = by_params[(1e30, "baseline_cnn")]
    assert nan.state == TrialState.FAIL
    assert nan.user_attrs["fail_reason"].startswith("NonFiniteLossError:")
    for lr in (0.03, 1e30):
        raised = by_params[(lr, "not_a_model")]
        assert raised.state == TrialState.FAIL
        assert raised.user_attrs["fail_reason"].startswith("ConfigError:")
        assert "not_a_model" in raised.user_attrs["fail_reason"]
    assert "1 complete, 0 pruned, 3 failed" in out.stdout
    assert OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml").best_value == pytest.approx(ok.value)

    # The same grid with max_failure_rate=0.25 of 4 trials tolerates 1 failure:
    # the sweep stops at the second one, with a message that says why.
    storage = f"sqlite:///{tmp_path / 'strict.db'}"
    grid[-1] = f"hydra.sweeper.storage={storage}"
    out = run_sweep(sweep_args(tmp_path, "esc50_grid", *grid, "hydra.sweeper.max_failure_rate=0.25",
                               f"hydra.sweep.dir={tmp_path / 'strict'}"), tmp_path, expect_ok=False)
    assert out.returncode != 0
    assert "max_failure_rate=0.25" in out.stdout + out.stderr
    assert states(load(storage, "esc50_grid"))[TrialState.FAIL] == 2


# --------------------------------------------------------------------------
# Pieces, in process


def _reporter_setup(tmp_path, report_epochs: bool, pruner) -> tuple[optuna.Study, TrialReporter]:
    storage = f"sqlite:///{tmp_path / 'unit.db'}"
    study = optuna.create_study(study_name="unit", storage=storage, direction="maximize", pruner=pruner)
    for value in (0.9, 0.8):  # two finished trials that did well at every step
        trial = study.ask()
        for step in (1, 2, 3, EPOCH_STRIDE, 2 * EPOCH_STRIDE, 3 * EPOCH_STRIDE):
            trial.report(value, step)
        study.tell(trial, value)
    trial = study.ask()
    return study, TrialReporter(reporter_cfg(tmp_path, trial.number, report_epochs), pruner=pruner)


def reporter_cfg(tmp_path, number: int, report_epochs: bool):
    return compose_config(["dataset=synthetic", "dataset.num_folds=3", "trainer.folds=[1,2,3]",
                           f"sweep.storage=sqlite:///{tmp_path / 'unit.db'}", "sweep.study_name=unit",
                           f"sweep.trial_number={number}", f"sweep.report_epochs={str(report_epochs).lower()}"])


def _fold(fold: int, acc: float) -> FoldResult:
    return FoldResult(fold=fold, val_acc=acc, val_loss=1.0, val_f1=acc, train_acc=acc, train_loss=1.0, epochs=3,
                      seconds=1.0, confusion=[[1]])


def test_reporter_reports_running_mean_per_fold_and_raises_when_pruned(tmp_path):
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1)
    study, reporter = _reporter_setup(tmp_path, False, pruner)
    reporter.on_fold_start(1, {"num_parameters": 1234})
    for epoch in (1, 2, 3):
        reporter.on_epoch_end(1, epoch, {"val_acc": 0.95})  # epochs are not reported by default
    # Optuna's median rule compares the trial's best value so far with the
    # median of the others at this step (0.85): a trial that once beat it goes on.
    for fold, acc in ((1, 0.95), (2, 0.85), (3, 0.1)):
        reporter.on_fold_end(_fold(fold, acc))
    trial = study.trials[-1]
    assert trial.intermediate_values == pytest.approx({1: 0.95, 2: 0.9, 3: (0.95 + 0.85 + 0.1) / 3})
    # Beside the objective, the test folds' mean (the honest estimate when trainer.validation=inner).
    # And the fold count and spread the sweeper's "trial N COMPLETE: ... ± std over 3 folds" line shows.
    attrs = dict(trial.user_attrs)
    # The per-fold values the study report pairs trials by.
    assert attrs.pop("fold_values") == pytest.approx({"r0f1": 0.95, "r0f2": 0.85, "r0f3": 0.1})
    assert attrs == pytest.approx({"num_parameters": 1234, "epochs_trained": 3,
                                              "test_fold_acc_mean": (0.95 + 0.85 + 0.1) / 3, "folds_done": 3,
                                              "objective_std": statistics.stdev([0.95, 0.85, 0.1])})
    study.tell(trial.number, trial.intermediate_values[3])

    cfg = reporter_cfg(tmp_path, study.ask().number, False)
    bad = TrialReporter(cfg, pruner=pruner)
    bad.on_fold_end(_fold(1, 0.9))  # at the median of the finished trials at step 1: goes on
    bad2 = TrialReporter(reporter_cfg(tmp_path, study.ask().number, False), pruner=pruner)
    with pytest.raises(optuna.TrialPruned, match="after 1 fold"):
        bad2.on_fold_end(_fold(1, 0.3))
    assert study.trials[-1].intermediate_values == pytest.approx({1: 0.3})


def test_reporter_with_report_epochs_prunes_inside_the_first_fold(tmp_path):
    study, reporter = _reporter_setup(tmp_path, True, optuna.pruners.MedianPruner(n_startup_trials=1))
    with pytest.raises(optuna.TrialPruned, match="fold 1, epoch 1"):
        reporter.on_epoch_end(1, 1, {"val_acc": 0.2})
    assert study.trials[-1].intermediate_values == {1: 0.2}


def test_reporter_with_report_epochs_puts_fold_ends_on_the_stride(tmp_path):
    study, reporter = _reporter_setup(tmp_path, True, optuna.pruners.NopPruner())
    for epoch in (1, 2):
        reporter.on_epoch_end(1, epoch, {"val_acc": 0.5})
    reporter.on_fold_end(_fold(1, 0.5))
    reporter.on_epoch_end(2, 1, {"val_acc": 0.7})  # later folds: only their end is reported
    reporter.on_fold_end(_fold(2, 0.7))
    assert study.trials[-1].intermediate_values == pytest.approx({1: 0.5, 2: 0.5, EPOCH_STRIDE: 0.5,
                                                                  2 * EPOCH_STRIDE: 0.6})


def _sweeper(n_trials: int):
    from esc_sweep.sweep.sweeper import EscOptunaSweeperImpl

    return EscOptunaSweeperImpl(
        sampler=optuna.samplers.RandomSampler(seed=0), sampler_seed=0, direction="maximize", storage=None,
        study_name="s", n_trials=n_trials, n_jobs=1, max_failure_rate=0.0, custom_search_space=None, params=None,
        pruner={"name": "none"}, report_epochs=False, extra_objectives=[], heartbeat_interval=0, grace_period=0,
        poll_seconds=0.1,
    )


def test_a_trial_asked_after_the_study_is_fully_claimed_is_closed_as_surplus(tmp_path):
    """Two workers both saw one trial missing and both asked: the one whose
    trial number is higher finds n_trials claimed below it and does not run."""
    from esc_sweep.sweep.storage import make_storage

    worker = _sweeper(n_trials=2)
    worker.rdb = make_storage(f"sqlite:///{tmp_path / 's.db'}", 0, 0)
    study = optuna.create_study(study_name="s", storage=worker.rdb, direction="maximize")
    other = study.ask()  # another worker's trial 0, running
    mine = worker._ask(study)
    assert mine is not None and mine.number == 1  # 1 claimed below it: it may run
    assert worker._ask(study) is None  # trial 2: trials 0 and 1 claim both slots
    surplus = study.trials[2]
    assert surplus.state == TrialState.FAIL and surplus.user_attrs["fail_reason"].startswith("surplus")
    # If trial 0 fails, its worker asks again and gets a trial that counts.
    study.tell(other, state=TrialState.FAIL)
    assert worker._ask(study).number == 3


def test_running_trial_without_heartbeat_is_marked_fail_as_stale(tmp_path):
    from esc_sweep.sweep.storage import fail_stale_trials, make_storage

    # A grace period of 3 s leaves a loaded CI machine seconds between "alive"'s beat and the check.
    rdb = make_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(study_name="hb", storage=rdb, direction="maximize")
    alive, dead = study.ask(), study.ask()
    rdb.record_heartbeat(dead._trial_id)
    time.sleep(4.5)  # more than the grace period without a beat from "dead"
    rdb.record_heartbeat(alive._trial_id)
    assert fail_stale_trials(study, rdb) == [dead.number]
    trials = study.get_trials(deepcopy=False)
    assert trials[alive.number].state == TrialState.RUNNING
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[dead.number].user_attrs["fail_reason"].startswith("stale")


def test_build_pruner_knows_four_names_and_rejects_others():
    assert isinstance(build_pruner({"name": "median"}), optuna.pruners.MedianPruner)
    assert isinstance(build_pruner({"name": "successive_halving"}), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(build_pruner({"name": "hyperband", "max_resource": 5}), optuna.pruners.HyperbandPruner)
    assert isinstance(build_pruner({"name": "none"}), optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match="hydra.sweeper.pruner.name='asha'"):
        build_pruner({"name": "asha"})


def test_storage_urls_survive_hydra_override_parsing():
    from esc_sweep.sweep.messages import override_value as _override_value

    url = "postgresql://esc:p%40ss@db.example:5432/optuna?sslmode=require&application_name=esc"
    (override,) = OverridesParser.create().parse_overrides([f"sweep.storage={_override_value(url)}"])
    assert override.value() == url
    assert _override_value(True) == "true" and _override_value(7) == "7"


def compose_with_hydra(overrides: list[str]):
    """The composed config including its ``hydra`` node (the sweeper's settings)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from esc_sweep.paths import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR)):
        return compose("config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("search", ["esc50_optuna", "arch_search", "acc_vs_size", "esc50_grid"])
def test_search_configs_compose_into_optuna_search_spaces(search):
    sweeper = compose_with_hydra([f"hparams_search={search}"]).hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.esc_sweep_sweeper.sweeper.EscOptunaSweeper"
    assert sweeper.study_name == search and sweeper.sampler.seed == 0
    distributions, fixed, _ = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed and len(distributions) == len(sweeper.params)
    if search == "esc50_optuna":
        assert distributions["optimizer.lr"].log
        assert set(distributions) >= {"optimizer.weight_decay", "trainer.batch_size", "augmentation.mixup_alpha",
                                      "augmentation.freq_mask_width", "augmentation.time_mask_width",
                                      "features.n_mels", "model.dropout", "trainer.epochs"}
    if search == "arch_search":
        assert "baseline_cnn" in distributions["model"].choices and len(distributions["model"].choices) >= 4
    if search == "acc_vs_size":
        assert list(sweeper.direction) == ["maximize", "minimize"]
        assert list(sweeper.extra_objectives) == ["num_parameters"]


@pytest.mark.parametrize("sampler", ["tpe", "gp", "cmaes", "random", "grid"])
def test_every_sampler_is_selectable(sampler):
    cfg = compose_with_hydra(["hparams_search=esc50_optuna", f"hydra/sweeper/sampler={sampler}"])
    assert cfg.hydra.sweeper.sampler._target_.lower().endswith(f".{sampler}sampler")
