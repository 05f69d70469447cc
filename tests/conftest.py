"""Shared fixtures.

Real ESC-50 comes from $ESC50_ROOT (CI points it at ../shared/esc50); tests
that need it skip with a clear reason when it is absent. Decoded waveforms are
cached under .cache/ in the repo so the suite decodes the 2000 clips once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parent.parent

from esc_sweep.runtime import configure  # noqa: E402  (before torch: passive OpenMP waiting)

configure()
os.environ.setdefault("ESC_SWEEP_CACHE", str(REPO / ".cache" / "test-waveforms"))

from esc_sweep.config import register_configs  # noqa: E402
from esc_sweep.paths import CONFIG_DIR as CONF  # noqa: E402

register_configs()


def compose_config(overrides: list[str] | None = None, config_name: str = "config"):
    """Compose the app's config with the Hydra compose API (no output dir, no run)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF)):
        return compose(config_name=config_name, overrides=overrides or [])


@pytest.fixture
def compose_cfg():
    return compose_config


@pytest.fixture(scope="session")
def esc50_root() -> Path:
    root = os.environ.get("ESC50_ROOT")
    if not root:
        pytest.skip("ESC50_ROOT not set; point it at an ESC-50 copy (e.g. ../shared/esc50)")
    path = Path(root)
    if not (path / "meta" / "esc50.csv").exists():
        pytest.skip(f"ESC50_ROOT={root} has no meta/esc50.csv")
    return path


# A tiny, fast configuration used by trainer tests: synthetic tones, small CNN.
FAST_SYNTHETIC = [
    "dataset=synthetic",
    "dataset.clips_per_class=10",
    "dataset.clip_seconds=0.5",
    "features.n_mels=32",
    "features.n_fft=256",
    "model=baseline_cnn",
    "model.width=8",
    "augmentation=none",
    "trainer.epochs=8",
    "trainer.batch_size=16",
    "trainer.progress=false",
    "optimizer.lr=0.01",
]


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600, **kwargs):
    """Run ``python -m esc_sweep`` as a user would, in ``cwd``.

    ``env`` is laid over this process's environment; a key set to None is removed.
    """
    merged = {**os.environ, **(env or {})}
    full_env = {key: value for key, value in merged.items() if value is not None}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run(
        [sys.executable, "-m", "esc_sweep", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _keep_tracking_uri_unchanged():
    """No test may leave $MLFLOW_TRACKING_URI behind for later tests' subprocesses.

    ``mlflow.set_tracking_uri`` exports it; a leaked value silently sent a later
    CLI run's records to another store.
    """
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    after = os.environ.get("MLFLOW_TRACKING_URI")
    if after != before:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        pytest.fail(f"the test left MLFLOW_TRACKING_URI={after!r} (was {before!r}); use monkeypatch")


# Tests whose module starts no process (no CLI run, no server, no subprocess):
# the fast in-process subset, `pytest -m fast`. Decided from the module's source,
# so a new test lands in the right subset without anyone remembering a marker.
_SPAWNS = ("run_cli(", "interrupt_cli(", "run_sweep(", "subprocess", "Popen", "trained_synthetic_run",
           "multiprocessing", "parallel_folds=")


# The marker is checked, not trusted: a `fast` test that starts a process fails (fixture below), so a
# module whose source does not show its spawning (a helper in another module) cannot hide in the subset.
# `git` is exempt: MLflow run tags read the commit through it, a few milliseconds.
_EXEMPT_COMMANDS = ("git",)
# A test not marked `slow` that runs longer than this is named at the end of the session.
SLOW_SECONDS = 60.0


@pytest.fixture(autouse=True)
def _fast_tests_start_no_process(request):
    # No monkeypatch here: requesting it would set it up before `_keep_tracking_uri_unchanged`
    # (autouse fixtures run in name order), so its undo of a test's setenv came after that check.
    if request.node.get_closest_marker("fast") is None:
        yield
        return
    import multiprocessing.process  # deferred: only the fast tests' guard needs it

    started: list[str] = []
    popen_init = subprocess.Popen.__init__
    process_start = multiprocessing.process.BaseProcess.start

    def recording_popen_init(self, args, *rest, **kwargs):
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        if Path(str(argv[0]).split()[0]).name not in _EXEMPT_COMMANDS:
            started.append(" ".join(map(str, argv))[:200])
        popen_init(self, args, *rest, **kwargs)

    def recording_start(self):
        started.append(f"multiprocessing {self.name}")
        process_start(self)

    subprocess.Popen.__init__ = recording_popen_init
    multiprocessing.process.BaseProcess.start = recording_start
    try:
        yield
    finally:
        subprocess.Popen.__init__ = popen_init
        multiprocessing.process.BaseProcess.start = process_start
    if started:
        pytest.fail(f"marked fast (in-process) but started a process: {started[0]!r}; its module must "
                    f"name how it spawns (one of {_SPAWNS}) so the marker leaves it out", pytrace=False)


_DURATIONS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    _DURATIONS[report.nodeid] = _DURATIONS.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Name the tests outside `slow` that took longer than SLOW_SECONDS: candidates for the marker."""
    slow = {item.nodeid for item in getattr(config, "_esc_items", []) if item.get_closest_marker("slow")}
    long = sorted(((t, n) for n, t in _DURATIONS.items() if t > SLOW_SECONDS and n not in slow), reverse=True)
    if long:
        terminalreporter.write_sep("-", f"{len(long)} tests outside 'slow' took over {SLOW_SECONDS:.0f} s")
        for seconds, nodeid in long[:30]:
            terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid}")


def pytest_collection_modifyitems(config, items):
    config._esc_items = items
    verdicts: dict[str, bool] = {}
    for item in items:
        path = str(item.fspath)
        if path not in verdicts:
            source = Path(path).read_text()
            verdicts[path] = not any(token in source for token in _SPAWNS)
        if verdicts[path]:
            item.add_marker(pytest.mark.fast)
