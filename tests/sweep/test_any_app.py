"""esc_optuna on a Hydra app that is not esc_sweep (tests/sweep/tiny_app.py, run in a subprocess):

* compat mode (the default for such an app): the Optuna plugin's trials on the same
  seed, no keys added to the app's config, a task returning None fails only its
  trial, ``max_failure_rate`` per batch and 1.0 never stops;
* esc_sweep's semantics on demand (``compat=false``): ``n_trials`` as the study's
  total, failed trials replaced, a study name derived from the search;
* a study remembers its search: resuming it with another search is refused;
* JournalStorage (``journal://``) as the study storage, resumed.
"""

from __future__ import annotations

import json

import pytest
from optuna.trial import TrialState

from tests.sweep.tiny_app import error_line, load, run_app, signature, trials, write_app

SAME_SEED_CASES = {
    # TPE, one objective, a float interval and a categorical.
    "tpe": ["hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=123"],
    # NSGA-II, two objectives (the task returns a tuple).
    "nsgaii-two-objectives": ["hydra/sweeper/sampler=nsgaii", "hydra.sweeper.sampler.seed=123",
                              "hydra.sweeper.direction=[minimize,minimize]", "mode=pair",
                              "x=range(-2.0,2.0,0.5)"],
    # The grid sampler, capped at the grid's 6 points.
    "grid": ["hydra/sweeper/sampler=grid", "hydra.sweeper.sampler.seed=123",
             "x=choice(-1.0,0.5)"],
}


@pytest.mark.parametrize("case", SAME_SEED_CASES)
def test_same_trials_as_the_official_sweeper_on_the_same_seed(tmp_path, case):
    app = write_app(tmp_path / "app")
    got = {}
    for sweeper in ("optuna", "esc_optuna"):
        storage = f"sqlite:///{tmp_path / sweeper}.db"
        run_app(app, f"hydra/sweeper={sweeper}", *SAME_SEED_CASES[case], "hydra.sweeper.n_trials=10",
                f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=same",
                sweep_dir=tmp_path / f"{sweeper}-out")
        got[sweeper] = signature(trials(storage, "same"))
    assert len(got["optuna"]) == (6 if case == "grid" else 10)
    assert got["esc_optuna"] == got["optuna"]


def test_another_app_gets_no_sweep_keys_and_a_none_result_fails_only_its_trial(tmp_path):
    app = write_app(tmp_path / "app")
    storage = f"sqlite:///{tmp_path / 's.db'}"
    out = run_app(app, "mode=none_y1", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=s")
    got = trials(storage, "s")
    assert len(got) == 6  # compat: n_trials trials, failed ones included
    for t in got:
        if t.params["y"] == 1:
            assert t.state == TrialState.FAIL
            assert t.user_attrs["fail_reason"].startswith("bad objective: the task must return a number")
        else:
            assert t.state == TrialState.COMPLETE, t.user_attrs  # (the app asserts it got no sweep.* keys)
    assert any(t.params["y"] == 1 for t in got)
    assert "Traceback" not in out.stderr


def test_max_failure_rate_per_batch_and_one_means_never_stop(tmp_path):
    app = write_app(tmp_path / "app")
    # Compat: the Optuna plugin's rate per batch; 2 of 2 failed > 0.5: stop, one line, exit 2.
    out = run_app(app, "mode=fail", "hydra.sweeper.n_jobs=2", "hydra.sweeper.max_failure_rate=0.5", check=False)
    line = error_line(out)
    assert line.startswith("error: 2 of 2 trials of a batch failed") and "RuntimeError: cfg.mode is fail" in line

    for compat in ("true", "false"):
        storage = f"sqlite:///{tmp_path / f'never-{compat}.db'}"
        out = run_app(app, "mode=fail", "hydra.sweeper.n_jobs=2", "hydra.sweeper.max_failure_rate=1.0",
                      f"hydra.sweeper.compat={compat}", f"hydra.sweeper.storage={storage}",
                      "hydra.sweeper.study_name=never", sweep_dir=tmp_path / f"never-{compat}")
        got = trials(storage, "never")
        # Never stopped, and ended: with 1.0 failed trials count towards n_trials in both modes.
        assert [t.state for t in got] == [TrialState.FAIL] * 6, compat
        assert all(t.user_attrs["fail_reason"] == "RuntimeError: cfg.mode is fail" for t in got)


def test_esc_semantics_on_another_app_resume_replace_failures_and_derive_the_study_name(tmp_path):
    """compat=false: n_trials finished trials in all, failures replaced; no study_name or
    storage given: outputs/optuna/config-<hash of the search>.db, one per search."""
    app = write_app(tmp_path / "app")
    common = ["hydra.sweeper.compat=false", "mode=fail_y1", "hydra.sweeper.max_failure_rate=0.9"]
    run_app(app, *common, "hydra.sweeper.n_trials=3", sweep_dir=tmp_path / "first")
    (db,) = (app / "outputs" / "optuna").glob("*.db")
    name = db.stem
    assert name.startswith("config-") and len(name) == len("config-") + 8
    storage = f"sqlite:///{db}"
    first = trials(storage, name)
    assert sum(t.state == TrialState.COMPLETE for t in first) == 3
    assert all(t.params["y"] == 1 for t in first if t.state == TrialState.FAIL)

    out = run_app(app, *common, "hydra.sweeper.n_trials=5", sweep_dir=tmp_path / "second")  # resumes: 2 more
    assert "3 of 5 trials finished" in out.stdout + out.stderr
    both = trials(storage, name)
    assert sum(t.state == TrialState.COMPLETE for t in both) == 5
    assert both[: len(first)] == first
    # Trials are numbered on, and so are their job folders.
    assert sorted(int(p.name) for p in (tmp_path / "second").iterdir() if p.name.isdigit()) == \
        [t.number for t in both[len(first):]]
    params = [tuple(sorted(t.params.items())) for t in both if t.state == TrialState.COMPLETE]
    assert len(set(params)) == len(params)  # the resumed sampler did not replay the first trials
    study = load(storage, name)
    assert study.user_attrs["esc_sweep.search_space"]["params"]["y"]["attributes"]["choices"] == [0, 1, 2]

    # Another search (x's range changed) gets another study, not the first one's.
    run_app(app, *common, "hydra.sweeper.n_trials=1", "x=interval(-3.0,3.0)",
            sweep_dir=tmp_path / "third")
    assert len(list((app / "outputs" / "optuna").glob("*.db"))) == 2


def test_a_study_on_a_journal_file_resumes_and_refuses_another_search(tmp_path):
    app = write_app(tmp_path / "app")
    # A relative journal path: from the folder the command runs in.
    common = ["hydra.sweeper.storage=journal://studies/j.log", "hydra.sweeper.study_name=j",
              "hydra.sweeper.n_trials=2", "hydra.sweeper.objective_names=[loss]"]
    run_app(app, *common, sweep_dir=tmp_path / "a")
    run_app(app, *common, sweep_dir=tmp_path / "b")  # compat: 2 more trials in the same study
    storage = f"journal://{app / 'studies' / 'j.log'}"
    study = load(storage, "j")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert study.metric_names == ["loss"]

    out = run_app(app, *common, "x=interval(-3.0,3.0)", "hydra.sweeper.direction=maximize",
                  sweep_dir=tmp_path / "c", check=False)
    line = error_line(out)
    assert line.startswith("error: study 'j' in journal:///") and "made for another search" in line
    assert "other ranges for x" in line and "directions ['minimize'] -> ['maximize']" in line
    assert len(load(storage, "j").trials) == 4


def test_the_report_of_another_app_is_the_official_results_file_plus_a_table(tmp_path):
    app = write_app(tmp_path / "app")
    out = run_app(app, "hydra.sweeper.n_trials=3", sweep_dir=tmp_path / "out")
    results = (tmp_path / "out" / "optimization_results.yaml").read_text()
    assert "name: optuna" in results and "best_params:" in results and "best_value:" in results
    assert "Best trial" in out.stdout
    assert not (tmp_path / "out" / "study_figures").exists()  # compat: report=summary
    jobs = [json.loads((tmp_path / "out" / str(n) / "job.json").read_text()) for n in range(3)]
    assert len({(j["x"], j["y"]) for j in jobs}) == 3
