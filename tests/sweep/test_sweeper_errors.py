"""Every esc_optuna user error through the real CLI (``python -m esc_sweep -m ...``):
one line, ``error: <what to fix>``, exit status 2, no traceback, no trial run.

Tiny synthetic settings (tests/sweep/test_sweep.py's TINY); only the space-mismatch case
trains (one trial of one fold) to make the study it then refuses to resume.
"""

from __future__ import annotations

import optuna
import pytest

from tests.conftest import run_cli
from tests.sweep.tiny_app import error_line
from tests.sweep.test_sweep import ENV, TINY


def _sweep(tmp_path, *extra: str):
    args = ["-m", "hparams_search=esc50_optuna", *TINY, "trainer.folds=[1]", "trainer.epochs=1", "tracking=none",
            f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *extra]
    return run_cli(args, tmp_path, env={"PYTHONPATH": ENV["PYTHONPATH"], "MLFLOW_TRACKING_URI": None}, timeout=300)


@pytest.mark.parametrize(("extra", "expected"), [
    (["optimizer.lrr=interval(0.001,0.01)"],
     "error: hydra.sweeper.params: optimizer.lrr=0.001 does not fit the app's config (misspelt?): "
     "ConfigCompositionException: Could not override 'optimizer.lrr'."),
    (["hydra.sweeper.pruner.name=asha"],
     "error: hydra.sweeper.pruner.name='asha': must be one of median, successive_halving, hyperband, none"),
    (["hydra.sweeper.n_trials=0"], "error: hydra.sweeper.n_trials=0: must be >= 1"),
    (["hydra.sweeper.max_failure_rate=1.5"], "error: hydra.sweeper.max_failure_rate=1.5: must be between 0.0 and 1.0"),
    (["hydra.sweeper.heartbeat_interval=0"], "error: hydra.sweeper.heartbeat_interval=0 is refused for a saved study"),
    (["hydra.sweeper.sampler.seed=abc"], None),  # Hydra's own type check, before the sweeper: not ours
], ids=["misspelt-parameter", "unknown-pruner", "no-trials", "failure-rate", "no-heartbeat", "hydra-own"])
def test_a_bad_sweeper_setting_is_one_line_and_exit_2(tmp_path, extra, expected):
    out = _sweep(tmp_path, *extra)
    if expected is None:
        assert out.returncode != 0
        return
    assert error_line(out).startswith(expected)
    assert not (tmp_path / "sweep").exists() or not any(p.name.isdigit() for p in (tmp_path / "sweep").iterdir())


def test_an_unwritable_storage_path_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    for storage in (f"sqlite:///{tmp_path / 'a_file' / 'study.db'}", f"journal://{tmp_path / 'a_file' / 's.log'}"):
        line = error_line(_sweep(tmp_path, f"hydra.sweeper.storage={storage}"))
        assert line == f"error: storage {storage} cannot be used: {tmp_path / 'a_file'} is a file, not a folder"


def test_resuming_a_study_with_another_search_is_refused_in_one_line(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = [f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=1", "hydra.sweeper.pruner.name=none",
              "model.dropout=0.1", "features.n_mels=16"]
    first = _sweep(tmp_path, *common, "optimizer.lr=tag(log,interval(0.003,0.05))")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    study = optuna.load_study(study_name="esc50_optuna", storage=storage)
    assert study.metric_names == ["mean_val_acc"]
    assert set(study.user_attrs["esc_sweep.search_space"]["params"]) == {"optimizer.lr"}

    # Named on the command line, the study is the one the user means: another search is refused.
    line = error_line(_sweep(tmp_path, *common[:-2], "optimizer.lr=tag(log,interval(0.001,0.05))",
                             "model.dropout=interval(0.0,0.3)", "features.n_mels=16",
                             "hydra.sweeper.study_name=esc50_optuna"))
    assert line == (
        f"error: study 'esc50_optuna' in {storage} was made for another search (new parameters "
        "model.dropout; other ranges for optimizer.lr): resume it with its own search, or start another "
        "study (hydra.sweeper.study_name=<new name>, or null for one derived from the search)"
    )
    assert len(optuna.load_study(study_name="esc50_optuna", storage=storage).trials) == 1
    # With the search's own name, another search gets a study of its own beside the first.
    out = _sweep(tmp_path, *common[:-2], "optimizer.lr=tag(log,interval(0.001,0.05))",
                 "model.dropout=interval(0.0,0.3)", "features.n_mels=16")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names[0] == "esc50_optuna" and names[1].startswith("esc50_optuna-") and len(names) == 2
    assert len(optuna.load_study(study_name="esc50_optuna", storage=storage).trials) == 1
