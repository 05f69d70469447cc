"""Ctrl-C in the middle of a fold, then the same command: it resumes at the saved epoch and ends with the
results of a run that was never stopped; the two runs' output folders point at each other."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

from esc_sweep.training.checkpoint import FoldCheckpoints
from tests.conftest import FAST_SYNTHETIC, run_cli
from tests.e2e.conftest import interrupt_cli

# Random (augmentation, dropout) and stateful (EMA, schedule) training, with epochs long enough for
# Ctrl-C to land inside a fold after its first saved epoch.
ARGS = FAST_SYNTHETIC + [
    "tracking.enabled=false", "dataset.clips_per_class=40", "dataset.clip_seconds=1.0", "dataset.num_folds=2",
    "trainer.folds=[1,2]", "trainer.epochs=8", "trainer.checkpoint_every=1", "augmentation=default",
    "trainer.ema_decay=0.9",
]
TIMINGS = ("epoch_seconds", "train_seconds", "eval_seconds")


def _args(cwd: Path) -> list[str]:
    return ARGS + [f"trainer.checkpoint_dir={cwd / 'ck'}"]


def _run_folders(cwd: Path) -> list[Path]:
    return sorted(cwd.glob("outputs/runs/*/*"))


def _numbers(results: dict) -> dict:
    """results.json without the wall-clock times."""
    folds = [{**{k: v for k, v in fold.items() if k != "seconds"},
              "history": [{k: v for k, v in h.items() if k not in TIMINGS} for h in fold["history"]]}
             for fold in results["folds"]]
    return {**{k: v for k, v in results.items() if k != "seconds"}, "folds": folds}


def test_ctrl_c_mid_fold_then_the_same_command_resumes_at_the_saved_epoch_with_identical_results(tmp_path):
    resumed_cwd, straight_cwd = tmp_path / "resumed", tmp_path / "straight"
    resumed_cwd.mkdir(), straight_cwd.mkdir()

    def an_epoch_is_saved() -> bool:
        return any((resumed_cwd / "ck").glob("*/fold_*.in_progress.pt"))

    stopped = interrupt_cli(_args(resumed_cwd), resumed_cwd, signal.SIGINT, checkpoint_root=resumed_cwd / "ck",
                            until=an_epoch_is_saved)
    assert stopped.returncode == 130, stopped.output[-3000:]
    assert "Traceback" not in stopped.output
    kept = FoldCheckpoints(stopped.checkpoint).kept()
    ((fold, epoch),) = kept.in_progress.items()  # stopped inside a fold, after at least one saved epoch
    assert 1 <= epoch < 8 and kept.finished == list(range(1, fold))
    finished = "fold 1 finished and " if kept.finished else ""
    message = (f"interrupted: {finished}fold {fold} saved at epoch {epoch} {'are' if finished else 'is'} kept in "
               f"{stopped.checkpoint}; run the same command again to resume.")
    assert message in " ".join(stopped.output.split())
    (interrupted_folder,) = _run_folders(resumed_cwd)

    again = run_cli(_args(resumed_cwd), cwd=resumed_cwd)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert f"fold {fold}: resuming after epoch {epoch} of 8" in log
    assert len(re.findall(r"resuming after epoch", log)) == 1  # only the interrupted fold resumes part-way

    straight = run_cli(_args(straight_cwd), cwd=straight_cwd)
    assert straight.returncode == 0, straight.stdout[-2000:] + straight.stderr[-3000:]
    assert "resuming" not in straight.stdout + straight.stderr

    (resumed_results,) = resumed_cwd.glob("outputs/runs/*/*/results.json")
    (straight_results,) = straight_cwd.glob("outputs/runs/*/*/results.json")
    resumed, uninterrupted = json.loads(resumed_results.read_text()), json.loads(straight_results.read_text())
    assert _numbers(resumed) == _numbers(uninterrupted)  # every metric, epoch by epoch, and the confusion matrices
    assert [len(f["history"]) for f in resumed["folds"]] == [8, 8]

    # The part-way state is gone once the fold is saved; the results name the run that finished.
    after = FoldCheckpoints(stopped.checkpoint).kept()
    assert (after.finished, after.in_progress) == ([1, 2], {})
    assert not list(stopped.checkpoint.glob("*.pt"))
    resumed_folder = resumed_results.parent
    assert resumed_folder != interrupted_folder
    assert str(interrupted_folder.resolve()) in (resumed_folder / "resumed_from.txt").read_text()
    assert str(resumed_folder.resolve()) in (interrupted_folder / "resumed_in.txt").read_text()
    assert not (straight_results.parent / "resumed_from.txt").exists()


def test_ctrl_c_before_any_epoch_is_saved_says_nothing_is_kept(tmp_path):
    args = _args(tmp_path) + ["trainer.checkpoint_every=0"]
    # state.json appears when the cross-validation starts (the run records its output folder there).
    stopped = interrupt_cli(args, tmp_path, signal.SIGINT, until=lambda: any((tmp_path / "ck").glob("*/state.json")))
    assert stopped.returncode == 130, stopped.output[-3000:]
    assert ("interrupted: no fold finished and no epoch was saved yet (trainer.checkpoint_every=0), so nothing is "
            "kept; run the same command again to start over.") in " ".join(stopped.output.split())
