"""The sweep's per-trial lines: sampled values rounded, no internal keys, the spread over folds."""

from __future__ import annotations

import logging

from esc_sweep.sweep.report import HideLaunchEcho, hide_launch_echo, trial_result_line, trial_start_line


def test_trial_start_line_rounds_the_sampled_values():
    line = trial_start_line(3, {"optimizer.lr": 0.0012345678901, "model.dropout": 0.05672626290769334,
                                "trainer.batch_size": 32, "features.kind": "mel"})
    assert line == "trial 3: optimizer.lr=0.001235 model.dropout=0.05673 trainer.batch_size=32 features.kind=mel"


def test_trial_result_line_shows_mean_and_std_over_folds():
    attrs = {"folds_done": 5, "objective_std": 0.041234567, "test_fold_acc_mean": 0.81250000298023224}
    assert trial_result_line(7, [0.81250000298023224], attrs, ["mean_val_acc"]) == \
        "trial 7 COMPLETE: mean_val_acc 0.8125 ± 0.04123 over 5 folds"
    # trainer.validation=inner: the objective is the inner score; the test folds' accuracy beside it.
    inner = {**attrs, "test_fold_acc_mean": 0.7}
    assert trial_result_line(7, [0.8125], inner, ["mean_val_acc"]).endswith("over 5 folds (test folds acc 0.7)")


def test_trial_result_line_one_fold_has_no_zero_std_and_other_apps_get_plain_values():
    assert trial_result_line(1, [0.5], {"folds_done": 1}, ["mean_val_acc"]) == \
        "trial 1 COMPLETE: mean_val_acc 0.5 over 1 fold"
    assert trial_result_line(2, [0.123456789, 1234567.0], {}, []) == "trial 2 COMPLETE: value 0.1235, value 1.235e+06"


def test_launcher_echo_is_dropped_and_other_lines_kept(caplog):
    hide_launch_echo()
    hide_launch_echo()  # once is enough, twice is harmless
    logger = logging.getLogger("hydra._internal.core_plugins.basic_launcher")
    assert sum(isinstance(f, HideLaunchEcho) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO):
        logger.info("Launching 1 jobs locally")
        logger.info("\t#0 : optimizer.lr=0.05672626290769334 sweep.storage=sqlite:///x.db sweep.trial_number=0")
        logger.info("\t#%d : %s", 1, "sweep.trial_number=1")
    assert [r.getMessage() for r in caplog.records] == ["Launching 1 jobs locally"]
