"""The `fast` marker is checked, not trusted: tests/conftest.py's guard, run by a real pytest.

A scratch suite gets a copy of tests/conftest.py and two test modules whose source names no way of
spawning (so the conftest marks them `fast`): one starts a process through a helper module, one does
not. Run with `-m fast`, the first must fail naming the command and the second pass. This module
starts pytest with subprocess, so it is itself outside the fast subset.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_a_fast_test_that_starts_a_process_fails_and_names_the_command(tmp_path):
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "helper_elsewhere.py").write_text(
        "import subprocess, sys\n\ndef run_it():\n    subprocess.run([sys.executable, '-c', 'print(42)'], check=True)\n")
    (tmp_path / "test_hidden.py").write_text("from helper_elsewhere import run_it\n\n\ndef test_hidden():\n    run_it()\n")
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    assert sum(range(4)) == 6\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-m", "fast", "-p", "no:cacheprovider", "-q", str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{REPO}"})
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-3000:]  # the session fails
    # The guard fails the spawning test at its teardown (an error), and only that one.
    assert "ERROR test_hidden.py::test_hidden" in text and "1 error" in text, text[-3000:]
    assert "test_plain" not in text.split("short test summary info")[-1] and "FAILED" not in text, text[-3000:]
    assert "marked fast (in-process) but started a process" in text and "print(42)" in text, text[-3000:]
