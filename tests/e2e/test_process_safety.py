"""Fold workers die with their run, and one run at a time trains into a checkpoint folder.

The first test is the real thing: a ``trainer.parallel_folds=2`` command line on synthetic data,
a second identical command while it trains, then ``kill -9`` of the first. The others check the
lock and a failed checkpoint save in-process.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esc_sweep.errors import TrainingError
from esc_sweep.training import checkpoint as checkpoint_mod
from esc_sweep.training.checkpoint import LOCK_FILE, FoldCheckpoints
from tests.conftest import FAST_SYNTHETIC, REPO, run_cli

LONG_PARALLEL_RUN = FAST_SYNTHETIC + [
    "tracking=none", "trainer.epochs=100000", "trainer.folds=[1,2]", "trainer.parallel_folds=2",
    "trainer.num_threads=1", "trainer.checkpoint_every=1",
]


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _tail(log: Path) -> str:
    return log.read_text()[-3000:] if log.is_file() else ""


def _wait_for(condition, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s:\n{_tail(log)}"
        time.sleep(0.1)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find the workers")
def test_kill_9_of_a_parallel_run_ends_its_workers_and_a_second_run_is_refused_meanwhile(tmp_path):
    ck = tmp_path / "ck"
    args = LONG_PARALLEL_RUN + [f"trainer.checkpoint_dir={ck}"]
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen([sys.executable, "-m", "esc_sweep", *args], cwd=tmp_path, stdout=out,
                                 stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # Both workers are training once each has saved an epoch of its fold.
        _wait_for(lambda: len(list(ck.glob("*/fold_*.in_progress.pt"))) == 2 or first.poll() is not None,
                  240, "two folds saving epochs", log)
        assert first.poll() is None, log.read_text()[-3000:]
        workers = [pid for pid in _children(first.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2, (workers, log.read_text()[-2000:])
        (folder,) = ck.iterdir()

        second = run_cli(args, cwd=tmp_path, timeout=300)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        message = " ".join((second.stdout + second.stderr).split())  # rich may wrap the line
        assert f"checkpoint folder {folder} is in use by another run" in message, message
        assert f"(pid {first.pid})" in message
        assert "Traceback" not in second.stderr

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        started = time.monotonic()
        _wait_for(lambda: not any(_alive(pid) for pid in workers), 5, "the workers ending", log)
        print(f"workers gone {time.monotonic() - started:.2f} s after kill -9")
        # The dead run's lock went with it: the folder can be used again.
        assert FoldCheckpoints(folder).kept([1, 2]).in_progress
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def _hold_lock_in_another_process(folder: Path) -> subprocess.Popen:
    script = (f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
              "from esc_sweep.training.checkpoint import FoldCheckpoints\n"
              f"held = FoldCheckpoints({str(folder)!r}); print('locked', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_checkpoint_folder_in_use_is_refused_naming_it_and_the_pid_until_its_holder_dies(tmp_path):
    folder = tmp_path / "ck" / "0123456789abcdef"
    holder = _hold_lock_in_another_process(folder)
    try:
        with pytest.raises(TrainingError) as refused:
            FoldCheckpoints(folder)
        assert str(refused.value).startswith(f"checkpoint folder {folder} is in use by another run")
        assert f"(pid {holder.pid})" in str(refused.value) and "\n" not in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    FoldCheckpoints(folder)  # the operating system released the dead holder's lock


def test_one_process_may_open_its_own_folder_many_times_and_reset_keeps_the_lock(tmp_path):
    first = FoldCheckpoints(tmp_path)
    second = FoldCheckpoints(tmp_path)  # e.g. marking the run complete after the cross-validation
    (tmp_path / "fold_1.json").write_text("{}")
    second.reset()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert first.directory == second.directory


def test_parallel_fold_workers_do_not_take_the_lock_their_parent_holds(tmp_path):
    FoldCheckpoints(tmp_path)
    script = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
              "from esc_sweep.training.checkpoint import FoldCheckpoints\n"
              f"FoldCheckpoints({str(tmp_path)!r}, lock=False); print('ok')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


class _DiskFullAfter:
    """A file object that writes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, path, room: int):
        self.handle, self.room = open(path, "wb"), room

    def write(self, data: bytes) -> int:
        self.handle.write(data[: self.room])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.mark.parametrize("save", ["fold state", "fold result"])
def test_a_full_disk_while_saving_removes_the_partial_file_and_names_the_folder(tmp_path, monkeypatch, save):
    checkpoints = FoldCheckpoints(tmp_path)
    progress = checkpoints.progress(1)
    progress.save({"epoch": 1})
    before = progress.path.read_bytes()
    monkeypatch.setattr(checkpoint_mod, "open", lambda path, mode: _DiskFullAfter(path, 10), raising=False)
    with pytest.raises(TrainingError) as failed:
        if save == "fold state":
            progress.save({"epoch": 2})
        else:
            checkpoint_mod._write_json(tmp_path / "fold_1.json", {"fold": 1})
    message = str(failed.value)
    assert f"the disk holding {tmp_path} is full" in message and "trainer.checkpoint_dir" in message, message
    assert not list(tmp_path.glob("*.tmp")), "the partial file was left behind"
    assert progress.path.read_bytes() == before, "the earlier save was damaged"
    assert not (tmp_path / "fold_1.json").exists()


def test_a_checkpoint_folder_that_cannot_be_made_is_one_line_naming_the_key(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrainingError) as refused:
        FoldCheckpoints(blocker / "ck")
    assert str(refused.value).startswith(f"cannot create the checkpoint folder {blocker / 'ck'}")
    assert "trainer.checkpoint_dir" in str(refused.value)


@pytest.mark.parametrize("guard", ["parent-death signal", "watchdog alone"])
def test_a_worker_exits_when_its_parent_is_killed(tmp_path, guard):
    """Each guard of ``die_with_parent`` on its own ends the child within seconds of a ``kill -9``."""
    ready = tmp_path / "ready"
    child = (f"import os, sys, time; sys.path.insert(0, {str(REPO)!r})\n"
             "from esc_sweep.training import parallel\n"
             + ("parallel._request_parent_death_signal = lambda: None\n" if guard == "watchdog alone" else "")
             + f"parallel.die_with_parent(os.getppid()); open({str(ready)!r}, 'w').close(); time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               f"child = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
                               "print(child.pid, flush=True); time.sleep(600)\n"], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        _wait_for(ready.exists, 120, "the child setting up its guard", tmp_path / "ready")
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while _alive(child_pid):
            assert time.monotonic() < deadline, f"the child outlived its parent by 5 s ({guard})"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
