"""esc_sweep's own sweep on a journal file (``journal://``): the trainer reports each
fold to its trial through the journal, and a re-run resumes the study."""

from __future__ import annotations

from optuna.trial import TrialState

from tests.conftest import run_cli
from tests.sweep.tiny_app import load
from tests.sweep.test_sweep import ENV, TINY


def test_esc_sweep_reports_folds_through_a_journal_storage_and_resumes(tmp_path):
    storage = f"journal://{tmp_path / 'studies' / 'esc.log'}"
    args = ["-m", "hparams_search=esc50_optuna", *TINY, "trainer.folds=[1,2]", "trainer.epochs=1", "tracking=none",
            "optimizer.lr=tag(log,interval(0.003,0.05))", "model.dropout=0.1", "features.n_mels=16",
            "hydra.sweeper.pruner.name=none", f"hydra.sweeper.storage={storage}",
            f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}"]
    env = {"PYTHONPATH": ENV["PYTHONPATH"], "MLFLOW_TRACKING_URI": None}
    for n_trials in (1, 2):
        out = run_cli([*args, f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweep.dir={tmp_path / str(n_trials)}"],
                      tmp_path, env=env, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "1 of 2 trials finished" in out.stdout + out.stderr
    study = load(storage, "esc50_optuna")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [1, 2]  # one report per fold, from the trainer
        assert trial.user_attrs["epochs_trained"] == 2 and trial.user_attrs["num_parameters"] > 0
    assert study.metric_names == ["mean_val_acc"]
