"""Surviving failures: non-finite loss, out of memory, Ctrl-C, damaged checkpoints, changed configs.

The kill -9 and resume test lives in tests/e2e/test_cli.py; NaN trials in a sweep
in tests/sweep/test_sweep.py. Here: what the user sees when a run fails, and that
the fold checkpoints stay trustworthy around failures.
"""

from __future__ import annotations

import json
import logging
import re
import signal
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from esc_sweep import errors
from esc_sweep.training.callbacks import Callback
from esc_sweep.training.checkpoint import FoldCheckpoints
from esc_sweep.models import register_model
from esc_sweep.runtime import pick_device
from esc_sweep.training.cv import cross_validate
from esc_sweep.training.fold import prepare, run_fold
from tests.conftest import FAST_SYNTHETIC, compose_config, run_cli
from tests.e2e.conftest import interrupt_cli

QUICK = FAST_SYNTHETIC + ["trainer.epochs=3", "trainer.folds=[1,2]"]


def _text(out) -> str:
    return out.stdout + out.stderr


def _results(cwd: Path) -> dict:
    (path,) = cwd.glob("outputs/runs/*/*/results.json")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------
# Non-finite loss


NAN_LINE = r"error: fold 1, epoch \d: [a-z -]*loss is nan(, [a-zA-Z0-9 -]+ is nan)*\."


def test_nan_loss_stops_the_cli_with_a_hint_and_marks_the_mlflow_runs_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # A learning rate of 1e30 blows the weights up: the loss of fold 1 becomes NaN.
    out = run_cli(QUICK + ["optimizer.lr=1e30", "trainer.folds=[1]", f"tracking.uri={uri}",
                           f"trainer.checkpoint_dir={tmp_path}/ck"], cwd=tmp_path)
    text = _text(out)
    assert out.returncode == 2, text[-3000:]
    squashed = " ".join(text.split())  # rich wraps at the terminal width
    # Every non-finite value of the epoch is named (a loss measured after the weights blew up, at least).
    assert re.search(NAN_LINE + r" Lower optimizer\.lr \(now 1e\+30\) or set trainer\.grad_clip=1\.0\.", squashed), \
        text[-3000:]
    assert "Traceback" not in text
    assert not list((tmp_path / "ck").glob("*/fold_*.json"))  # a failed fold is never saved as finished
    assert not list(tmp_path.glob("outputs/runs/*/*/results.json"))

    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "esc_sweep"]
    runs = client.search_runs([experiment.experiment_id])
    # The CV run, its fold run and the CV run's "system metrics" child: all FAILED.
    assert sorted(r.data.tags["esc_sweep.role"] for r in runs) == ["cv", "fold", "system"]
    assert {r.info.status for r in runs} == {"FAILED"}
    for run in [r for r in runs if r.data.tags["esc_sweep.role"] != "system"]:
        assert run.info.status == "FAILED"
        assert re.match("NonFiniteLossError: " + NAN_LINE[len("error: "):], run.data.tags["esc_sweep.error"])


# --------------------------------------------------------------------------
# Out of memory. There is no GPU here, so a registered model raises the
# exception CUDA raises (torch.OutOfMemoryError) and the real trainer handles it.


class _OutOfMemoryNet(nn.Module):
    def __init__(self, num_classes: int, when: str):
        super().__init__()
        self.head = nn.Linear(1, num_classes)
        self.when = when  # "train" or "eval": which kind of forward pass runs out of memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training == (self.when == "train"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.head(x.mean(dim=(1, 2, 3)).unsqueeze(1))


@register_model("test_oom_in_train")
def _oom_in_train(cfg, num_classes):  # the original two-argument builder form still registers
    return _OutOfMemoryNet(num_classes, "train")


@register_model("test_oom_in_eval")
def _oom_in_eval(cfg, num_classes, **kwargs):
    return _OutOfMemoryNet(num_classes, "eval")


@pytest.fixture(scope="module")
def synthetic_features():
    cfg = compose_config(QUICK + ["tracking.enabled=false"])
    device = pick_device("cpu")
    return device, prepare(cfg, device)


@pytest.mark.parametrize("when", ["train", "eval"])
def test_out_of_memory_in_a_fold_says_to_lower_the_batch_size(synthetic_features, when):
    device, (clips, spectrograms, targets) = synthetic_features
    cfg = compose_config(QUICK + ["tracking.enabled=false", f"model.name=test_oom_in_{when}"])
    with pytest.raises(errors.OutOfMemoryError) as info:
        run_fold(cfg, clips, spectrograms, targets, 2, device, Callback())
    message = str(info.value)
    assert message.startswith("fold 2: cpu ran out of memory with trainer.batch_size=16.")
    assert "Lower trainer.batch_size (or trainer.eval_batch_size), or use a smaller model." in message
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)  # the original stays attached for debugging
    assert isinstance(info.value, errors.EscSweepError)  # so the CLI prints it without a traceback, exit 2


def test_out_of_memory_marks_the_mlflow_runs_failed(tmp_path):
    from esc_sweep.tracking.cv_run import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(QUICK + ["model.name=test_oom_in_train", f"tracking.uri={uri}",
                                  f"trainer.checkpoint_dir={tmp_path}/ck"])
    with pytest.raises(errors.OutOfMemoryError, match="Lower trainer.batch_size"):
        cross_validate(cfg, [MlflowTracker(cfg)])
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.data.tags["esc_sweep.role"] for r in runs) == ["cv", "fold", "system"]
    assert {r.info.status for r in runs} == {"FAILED"}
    assert all(r.data.tags["esc_sweep.error"].startswith("OutOfMemoryError: fold 1: cpu ran out of memory")
               for r in runs if r.data.tags["esc_sweep.role"] != "system")


# --------------------------------------------------------------------------
# Ctrl-C, then a changed config, then the same command again

CTRL_C_ARGS = FAST_SYNTHETIC + ["tracking.enabled=false", "trainer.folds=[1,2]", "trainer.epochs=6"]


def _interrupt(cwd: Path, signum: int) -> tuple[list[str], str, int, Path]:
    """Run the CLI in ``cwd`` and send ``signum`` once fold 1 is saved, while fold 2 trains."""
    args = CTRL_C_ARGS + [f"trainer.checkpoint_dir={cwd / 'ck'}"]
    stopped = interrupt_cli(args, cwd, signum, checkpoint_root=cwd / "ck", after_fold=1)
    return args, stopped.output, stopped.returncode, stopped.checkpoint


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A CLI run stopped with Ctrl-C (SIGINT) while fold 2 trains: (cwd, args, output, exit status, checkpoint dir)."""
    cwd = tmp_path_factory.mktemp("ctrl_c")
    return (cwd, *_interrupt(cwd, signal.SIGINT))


def _assert_stopped_cleanly(output: str, returncode: int, checkpoint: Path, cwd: Path) -> None:
    assert returncode == 130, output[-3000:]
    # Fold 2 may or may not have saved an epoch when the signal lands; the message says which.
    assert re.search(r"interrupted: fold 1 finished (is|and fold 2 saved at epoch [1-5] are) kept in "
                     + re.escape(str(checkpoint)) + r"; run the same command again to resume\.",
                     " ".join(output.split())), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert (checkpoint / "fold_1.json").is_file() and not (checkpoint / "fold_2.json").exists()
    assert not FoldCheckpoints(checkpoint).is_complete()
    assert not list(cwd.glob("outputs/runs/*/*/results.json"))


def test_ctrl_c_stops_the_run_with_one_line_and_keeps_the_finished_fold(interrupted):
    cwd, _, output, returncode, checkpoint = interrupted
    _assert_stopped_cleanly(output, returncode, checkpoint, cwd)


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    _, output, returncode, checkpoint = _interrupt(tmp_path, signal.SIGTERM)
    _assert_stopped_cleanly(output, returncode, checkpoint, tmp_path)


def test_a_changed_config_does_not_reuse_the_interrupted_checkpoints(interrupted, tmp_path):
    cwd, args, _, _, checkpoint = interrupted
    saved = (checkpoint / "fold_1.json").read_bytes()
    out = run_cli(args + ["optimizer.lr=0.02"], cwd=tmp_path)
    assert out.returncode == 0, _text(out)[-3000:]
    assert "finished earlier" not in out.stderr
    assert [f["epochs"] for f in _results(tmp_path)["folds"]] == [6, 6]  # both folds trained
    # It used its own checkpoint folder and left the interrupted run's alone.
    assert len(list(checkpoint.parent.iterdir())) == 2
    assert (checkpoint / "fold_1.json").read_bytes() == saved
    assert not FoldCheckpoints(checkpoint).is_complete()


def test_the_same_command_after_ctrl_c_resumes_the_finished_fold(interrupted):
    cwd, args, _, _, checkpoint = interrupted
    saved = json.loads((checkpoint / "fold_1.json").read_text())
    out = run_cli(args, cwd=cwd)
    assert out.returncode == 0, _text(out)[-3000:]
    assert "fold 1: finished earlier" in out.stderr and "fold 2: finished earlier" not in out.stderr
    fold1, fold2 = _results(cwd)["folds"]
    assert fold1 == saved  # reported from the checkpoint, not retrained
    assert fold2["fold"] == 2 and len(fold2["history"]) == 6
    assert FoldCheckpoints(checkpoint).is_complete()


# --------------------------------------------------------------------------
# Damaged checkpoint files


def _checkpoint_dir(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "ck").iterdir()
    return path


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # half-written
        lambda text: "",  # empty
        lambda text: "[]",  # valid JSON, wrong shape
        lambda text: json.dumps({"fold": 1, "val_acc": 0.5}),  # fields missing
        lambda text: json.dumps({**json.loads(text), "surprise": 1}),  # unknown field
    ],
    ids=["half_written", "empty", "list", "missing_fields", "unknown_field"],
)
def test_unreadable_fold_checkpoint_is_ignored_with_a_warning(tmp_path, caplog, damage):
    from esc_sweep.training.results import FoldResult

    checkpoints = FoldCheckpoints(tmp_path / "ck")
    good = FoldResult(fold=1, val_acc=0.5, val_loss=1.0, val_f1=0.4, train_acc=0.9, train_loss=0.2, epochs=3,
                      seconds=1.0, confusion=[[1, 1], [0, 2]])
    checkpoints.save(good)
    assert checkpoints.load(1) == good
    path = tmp_path / "ck" / "fold_1.json"
    path.write_text(damage(path.read_text()))
    with caplog.at_level(logging.WARNING, logger="esc_sweep.training.checkpoint"):
        assert checkpoints.load(1) is None
    assert "fold 1 checkpoint" in caplog.text and str(path) in caplog.text and "training the fold again" in caplog.text


def test_corrupt_state_file_is_ignored_with_a_warning(tmp_path, caplog):
    checkpoints = FoldCheckpoints(tmp_path / "ck")
    checkpoints.update_state(complete=True, mlflow_parent_run_id="abc")
    (tmp_path / "ck" / "state.json").write_text('{"complete": tr')
    with caplog.at_level(logging.WARNING, logger="esc_sweep.training.checkpoint"):
        assert checkpoints.state == {} and not checkpoints.is_complete()
    assert "state.json is unreadable" in caplog.text


class _Resumed(Callback):
    def __init__(self):
        self.resumed: dict[int, bool] = {}

    def on_fold_end(self, result, resumed=False):
        self.resumed[result.fold] = resumed


def test_half_written_fold_checkpoint_is_recomputed_and_the_others_reused(tmp_path, caplog):
    cfg = compose_config(QUICK + ["tracking.enabled=false", f"trainer.checkpoint_dir={tmp_path}/ck"])
    first = cross_validate(cfg)
    directory = _checkpoint_dir(tmp_path)
    # As if the run had been interrupted after fold 2 and fold 1's file were damaged since.
    FoldCheckpoints(directory).update_state(complete=False)
    fold1 = directory / "fold_1.json"
    fold1.write_text(fold1.read_text()[:200])

    recorder = _Resumed()
    with caplog.at_level(logging.WARNING, logger="esc_sweep.training.checkpoint"):
        second = cross_validate(cfg, [recorder])
    assert recorder.resumed == {1: False, 2: True}
    assert f"fold 1 checkpoint {fold1} is unreadable" in caplog.text
    # Retrained with the same seed: the same numbers as the first time.
    a, b = first.folds[0], second.folds[0]
    assert (a.val_acc, a.val_loss, a.train_loss, a.confusion) == (b.val_acc, b.val_loss, b.train_loss, b.confusion)
    assert json.loads(fold1.read_text())["val_loss"] == b.val_loss  # rewritten, whole
