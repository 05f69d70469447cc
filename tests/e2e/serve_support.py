"""Shared by the ``esc-sweep serve`` tests: the real command in a subprocess, a small bundle trained on
real ESC-50 clips, and a headless Chromium.

The browser is Debian's ``chromium`` driven by ``chromedriver`` through Selenium. CI installs both with

    apt-get install -y chromium chromium-driver

and the browser tests skip, saying so, where they are absent.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.conftest import run_cli

# --------------------------------------------------------------------------
# The server


@dataclass
class Served:
    url: str
    stdout: list[str]  # the lines it printed before serving
    log: Path  # its stderr


@contextmanager
def serve(args: list[str], log_dir: Path, cwd: Optional[Path] = None, timeout: float = 240) -> Iterator[Served]:
    """``python -m esc_sweep serve ARGS --port 0``; yields once it prints ``Serving on URL``; stops it after."""
    log_path = log_dir / f"serve-{time.monotonic_ns()}.log"
    with open(log_path, "w") as stderr:  # a file, not a pipe: request logs can never block the server
        process = subprocess.Popen(
            [sys.executable, "-m", "esc_sweep", "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"},
        )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    url, seen, deadline = None, [], time.monotonic() + timeout
    try:
        while url is None and time.monotonic() < deadline and process.poll() is None:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            seen.append(line)
            if line.startswith("Serving on "):
                url = line.split()[2]
        if url is None:
            pytest.fail(f"serve did not start: {''.join(seen)}{log_path.read_text()[-3000:]}")
        yield Served(url, seen, log_path)
    finally:
        if process.poll() is None:
            process.terminate()  # SIGTERM: the CLI turns it into Ctrl-C and closes the server
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --------------------------------------------------------------------------
# A bundle trained on real ESC-50 clips (five distinctive classes: about a minute on two cores)

REAL_CLASSES = ["dog", "rooster", "rain", "church_bells", "siren"]
REAL_OVERRIDES = [
    f"dataset.classes=[{','.join(REAL_CLASSES)}]",
    "features.n_mels=32",
    "model=baseline_cnn",
    "model.width=8",
    "augmentation=none",
    "trainer.epochs=10",
    "trainer.batch_size=16",
    "trainer.progress=false",
    "optimizer.lr=0.003",
    "trainer.folds=[1]",
    "trainer.final_fit=true",
]
# One fold-1 clip per class (the final fit saw them; the check is that serving gets them right).
REAL_CLIPS = {
    "dog": "1-100032-A-0",
    "rooster": "1-26806-A-1",
    "rain": "1-17367-A-10",
    "church_bells": "1-13571-A-46",
    "siren": "1-31482-A-42",
}


def trained_real_bundle(tmp_path_factory, esc50_root: Path) -> Path:
    """The bundle folder of a run on REAL_CLASSES, trained once per test session."""
    base = tmp_path_factory.getbasetemp() / "real-bundle-run"
    record = base / "bundle.txt"
    if record.exists():
        return Path(record.read_text())
    base.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{base / 'mlflow.db'}"
    out = run_cli(REAL_OVERRIDES, cwd=base, env={"MLFLOW_TRACKING_URI": uri, "ESC50_ROOT": str(esc50_root)})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (bundle,) = [p.parent for p in (base / "outputs" / "runs").glob("*/*/bundle/bundle.json")]
    assert set(json.loads((bundle / "bundle.json").read_text())["class_names"]) == set(REAL_CLASSES)
    record.write_text(str(bundle))
    return bundle


def real_clip(esc50_root: Path, label: str) -> Path:
    (path,) = (esc50_root / "audio").glob(f"{REAL_CLIPS[label]}.*")
    return path


# --------------------------------------------------------------------------
# The browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1400",
    # A microphone without a person: a fake device, permission granted without asking.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]


def browser_missing() -> Optional[str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: apt-get install -y chromium chromium-driver (Debian package {package})"
    return None


def start_chromium(profile: Path, microphone_file: Optional[Path] = None):
    """A headless Chromium; ``microphone_file`` (a WAV) is what its fake microphone hears, looped."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]
    if microphone_file is not None:
        flags.append(f"--use-file-for-fake-audio-capture={microphone_file}")
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    return driver
