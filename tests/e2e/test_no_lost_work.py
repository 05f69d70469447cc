"""Nothing a run computed is lost: fold subsets, a full disk at the end, a kill during the final fit,
two runs in the same second."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

from esc_sweep.training.callbacks import Callback
from esc_sweep.training.cv import cross_validate
from tests.conftest import FAST_SYNTHETIC, REPO, compose_config, run_cli
from tests.e2e.conftest import interrupt_cli

QUICK = FAST_SYNTHETIC + ["trainer.epochs=2", "tracking.enabled=false"]


class Trained(Callback):
    def __init__(self):
        self.folds: list[int] = []

    def on_fold_start(self, fold, context):
        self.folds.append(fold)


def test_all_folds_after_a_finished_one_fold_run_reuse_that_fold(tmp_path):
    ck = f"trainer.checkpoint_dir={tmp_path / 'ck'}"
    first, trained = compose_config(QUICK + [ck, "trainer.folds=[1]"]), Trained()
    one = cross_validate(first, [trained])
    assert trained.folds == [1]
    wider, trained = compose_config(QUICK + [ck, "trainer.folds=[1,2,3]"]), Trained()
    three = cross_validate(wider, [trained])
    assert trained.folds == [2, 3], "fold 1 was finished and must not be trained again"
    assert three.folds[0].to_dict() == one.folds[0].to_dict()
    # The same command after a completed run starts afresh (documented), and only then.
    again = Trained()
    cross_validate(wider, [again])
    assert again.folds == [1, 2, 3]


def test_results_that_cannot_be_written_keep_every_fold_resumable(tmp_path):
    """A real write failure (the file-size limit, as a full disk would) at the end of a CV."""
    ck = tmp_path / "ck"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.conftest import compose_config
        from esc_sweep.app.report import write_results
        from esc_sweep.errors import EscSweepError
        from esc_sweep.training.cv import cross_validate
        cfg = compose_config({QUICK + [f"trainer.checkpoint_dir={ck}", "trainer.folds=[1,2]"]!r})
        cv = cross_validate(cfg, mark_complete=False)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # get EFBIG from write() instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        try:
            write_results(cv, {str(tmp_path)!r})
        except EscSweepError as err:
            print("REFUSED", err)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "REFUSED cannot write" in out.stdout and "the folds are not trained again" in out.stdout, out.stdout
    assert not (tmp_path / "results.json").exists() and not list(tmp_path.glob(".results.json*"))
    trained = Trained()
    cross_validate(compose_config(QUICK + [f"trainer.checkpoint_dir={ck}", "trainer.folds=[1,2]"]), [trained])
    assert trained.folds == [], "both folds were finished before the write failed"


def test_kill_during_the_final_fit_keeps_the_cross_validation(tmp_path):
    args = QUICK + ["trainer.folds=[1,2]", "trainer.final_fit=true", "trainer.epochs=30",
                    f"trainer.checkpoint_dir={tmp_path / 'ck'}"]
    killed = interrupt_cli(args, tmp_path, signal.SIGKILL, when=lambda output: "final fit" in output)
    assert killed.returncode == -signal.SIGKILL
    again = run_cli(args[:-3] + ["trainer.final_fit=false", "trainer.epochs=30",
                                 f"trainer.checkpoint_dir={tmp_path / 'ck'}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "fold 1: finished earlier" in again.stderr and "fold 2: finished earlier" in again.stderr


def test_two_runs_started_together_get_their_own_output_folders(tmp_path):
    # Each its own checkpoint folder: one folder takes one run at a time (tests/e2e/test_process_safety.py).
    args = QUICK + ["trainer.folds=[1]", "trainer.epochs=1"]
    procs = [subprocess.Popen([sys.executable, "-m", "esc_sweep", *args, f"trainer.checkpoint_dir={tmp_path / f'ck{i}'}"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]
    for proc in procs:
        assert proc.wait(600) == 0, proc.stderr.read()[-2000:]
    results = sorted(tmp_path.glob("outputs/runs/*/*/results.json"))
    assert len(results) == 2 and results[0].parent != results[1].parent
    for path in results:
        assert json.loads(path.read_text())["folds"][0]["fold"] == 1


def test_a_full_disk_while_writing_the_feature_cache_costs_speed_not_the_run(tmp_path):
    """The file-size limit makes every large write fail as a full disk does; the run still finishes."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        import torch
        from esc_sweep.features.cache import cached_features
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        values = cached_features(__import__("pathlib").Path({str(tmp_path)!r}), "k", lambda: torch.ones(100000))
        print("OK", float(values.sum()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0 and "OK 100000.0" in out.stdout, out.stderr[-3000:]
    assert "could not write the feature cache" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob(".features-*"))
