"""The one way end-to-end tests stop a real CLI run part-way (Ctrl-C, SIGTERM, kill -9)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional


@dataclass
class Interrupted:
    output: str  # stdout and stderr together
    returncode: int
    checkpoint: Optional[Path]  # the run's fold-checkpoint folder, when one was written


def interrupt_cli(args: list[str], cwd: Path, signum: int, *, checkpoint_root: Optional[Path] = None,
                  after_fold: Optional[int] = None, when: Optional[Callable[[str], bool]] = None,
                  until: Optional[Callable[[], bool]] = None, env: Optional[dict] = None,
                  timeout: float = 300) -> Interrupted:
    """Run ``python -m esc_sweep args`` in ``cwd``; send ``signum`` once fold ``after_fold`` is saved under
    ``checkpoint_root``, ``when(output so far)`` holds and ``until()`` holds (those given); wait for the
    process to end. ``env``: the child's whole environment (default: this process's)."""
    log_path = cwd / f"cli-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:  # a file, not a pipe: the child can never block on output
        proc = subprocess.Popen([sys.executable, "-m", "esc_sweep", *args], cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT,
                                env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + timeout

            def ready() -> bool:
                if after_fold is not None and not list(checkpoint_root.glob(f"*/fold_{after_fold}.json")):
                    return False
                if when is not None and not when(log_path.read_text()):
                    return False
                return until is None or until()

            while not ready():
                assert proc.poll() is None, f"the run ended before it could be stopped:\n{log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"never ready to stop:\n{log_path.read_text()[-3000:]}"
                time.sleep(0.05)
            proc.send_signal(signum)
            returncode = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    folders = sorted(checkpoint_root.iterdir()) if checkpoint_root is not None and checkpoint_root.exists() else []
    return Interrupted(log_path.read_text(), returncode, folders[0] if len(folders) == 1 else None)
