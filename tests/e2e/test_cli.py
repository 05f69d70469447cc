"""The real command line, as a user runs it (subprocess, real Hydra)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.conftest import FAST_SYNTHETIC, run_cli
from tests.e2e.conftest import interrupt_cli

FIVE_CLASSES = "dataset.classes=[dog,rooster,rain,crying_baby,clock_tick]"


def _results(cwd: Path) -> dict:
    found = sorted(cwd.glob("outputs/runs/*/*/results.json"))
    assert found, "no results.json written"
    return json.loads(found[-1].read_text())


def test_cfg_job_and_defaults_tree(tmp_path):
    out = run_cli(["--cfg", "job", "model=resnet18", "features=mel"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "name: resnet18" in out.stdout and "kind: mel" in out.stdout
    out = run_cli(["--info", "defaults-tree"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "model: baseline_cnn" in out.stdout and "features: mel" in out.stdout


def test_synthetic_run_prints_table_and_writes_results(tmp_path):
    out = run_cli(FAST_SYNTHETIC + ["tracking.enabled=false", "trainer.folds=[1,2]"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Cross-validation" in out.stdout and "mean" in out.stdout
    results = _results(tmp_path)
    assert [f["fold"] for f in results["folds"]] == [1, 2]
    assert 0 <= results["summary"]["cv_val_acc_mean"] <= 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["dataset.root=/nonexistent/esc50"], "/nonexistent/esc50"),
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["trainer.folds=[7]"], "trainer.folds"),
        (["model.name=not_a_model", "dataset=synthetic"], "not_a_model"),
        pytest.param(["trainer.device=cuda", "dataset=synthetic"], "no CUDA device",
                     marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")),
    ],
)
def test_user_errors_are_one_clear_message_without_traceback(tmp_path, args, message):
    out = run_cli(args + ["tracking.enabled=false", "trainer.progress=false"], cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    text = out.stdout + out.stderr
    assert "error:" in text and message in text
    assert "Traceback" not in text


def test_real_esc50_end_to_end(tmp_path, esc50_root):
    out = run_cli(
        [FIVE_CLASSES, "trainer.epochs=2", "trainer.folds=[1]", "model.width=8", "tracking.enabled=false",
         f"trainer.checkpoint_dir={tmp_path}/ck"],
        cwd=tmp_path,
        env={"ESC50_ROOT": str(esc50_root)},
    )
    assert out.returncode == 0, out.stderr
    assert "Cross-validation" in out.stdout
    results = _results(tmp_path)
    assert results["class_names"] == ["dog", "rooster", "rain", "crying_baby", "clock_tick"] or sorted(
        results["class_names"]) == sorted(["dog", "rooster", "rain", "crying_baby", "clock_tick"])
    fold = results["folds"][0]
    assert sum(map(sum, fold["confusion"])) == 40  # 5 classes x 8 clips in fold 1
    assert len(fold["history"]) == 2


@pytest.mark.slow  # 65 s; Ctrl-C resume is also covered by test_reliability and test_resume_mid_fold
def test_kill_and_resume_skips_finished_folds_and_matches_an_uninterrupted_run(tmp_path):
    args = FAST_SYNTHETIC + ["tracking.enabled=false", "dataset.clip_seconds=1.0", "model.width=16",
                             "trainer.epochs=10", f"trainer.checkpoint_dir={tmp_path}/ck"]
    killed_cwd = tmp_path / "killed"
    killed_cwd.mkdir()
    killed = interrupt_cli(args, killed_cwd, signal.SIGKILL, checkpoint_root=tmp_path / "ck", after_fold=2)
    assert killed.returncode == -signal.SIGKILL and killed.checkpoint is not None
    assert not (killed.checkpoint / "fold_5.json").exists()

    resumed = run_cli(args, cwd=killed_cwd)
    assert resumed.returncode == 0, resumed.stderr
    assert "fold 1: finished earlier" in resumed.stderr and "fold 2: finished earlier" in resumed.stderr
    assert "fold 5: finished earlier" not in resumed.stderr

    fresh_cwd = tmp_path / "fresh"
    fresh_cwd.mkdir()
    fresh = run_cli(args[:-1] + [f"trainer.checkpoint_dir={tmp_path}/ck_fresh"], cwd=fresh_cwd)
    assert fresh.returncode == 0, fresh.stderr
    got, want = _results(killed_cwd), _results(fresh_cwd)
    for a, b in zip(got["folds"], want["folds"]):
        assert (a["fold"], a["val_acc"], a["val_loss"], a["train_acc"]) == (b["fold"], b["val_acc"], b["val_loss"], b["train_acc"])
    # A completed run is not replayed: the next identical command trains again.
    again = run_cli(args, cwd=killed_cwd)
    assert "finished earlier" not in again.stderr
