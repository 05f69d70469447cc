"""The docs test: every command in README.md's shell code blocks runs and exits 0.

The commands are read from the README as it stands (```bash blocks, one
command per line, comments dropped), so editing a command there changes what
runs here, and a command that breaks fails its test. Each runs as a user would
(``python`` is this venv's interpreter, ``esc-sweep`` and ``mlflow`` its
binaries), in one shared working folder, with tiny settings laid over it:

* the data: ``ESC50_ROOT`` points at a generated ESC-50-layout root (tones of
  12 real ESC-50 classes, the ESC-10 ones included, 2 clips per fold);
* training: 0.5 s clips, 1 epoch, fold 1 only, 32 mels; a sweep: 2 trials.

A key the command sets itself (``hydra.sweeper.n_trials=40``) is replaced, not
repeated. Only the commands in ``SKIPPED`` are not run, each with its reason;
commands that load big timm models or run sweeps are marked ``slow``.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO

README = REPO / "README.md"
BIN = Path(sys.executable).parent

SKIPPED = {
    "python -m esc_sweep experiment=quick_cpu dataset=urbansound8k dataset.root=/data/UrbanSound8K":
        "a placeholder root (UrbanSound8K is 6 GB); tests/e2e/test_official_datasets_cli.py runs this recipe "
        "on a generated tree in the official layout",
    "python -m esc_sweep experiment=quick_cpu dataset=fsdkaggle2018 dataset.root=/data/fsdkaggle2018 "
    "augmentation.crop_seconds=0 trainer.validation=inner trainer.objective=map3":
        "a placeholder root; tests/e2e/test_official_datasets_cli.py runs it on a generated tree",
    "python -m esc_sweep dataset=folder dataset.root=/data/clips dataset.csv=meta.csv dataset.protocol=holdout":
        "a placeholder root; tests/data/test_official_datasets.py loads such a CSV",
    "python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . && .venv/bin/python -m esc_sweep":
        "an install plus the full default job (5 folds of real ESC-50, hours on a CPU); "
        "tests/foundation/test_install.py checks the line",
    'python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e ".[dev,launchers,dashboard]" '
    "&& .venv/bin/python -m pytest":
        "an install plus this whole suite: .ci/run runs the line verbatim",
    "python -m esc_sweep model=panns_cnn14 model.weights=panns:cnn14 model.finetune=linear_probe":
        "downloads the PANNs CNN14 checkpoint from Zenodo (no internet here); tests/models/test_weights.py "
        "runs the same download code against a local HTTP server, tests/models/test_transfer.py the fine-tuning",
    "esc-sweep compare outputs/runs/<date>/<run A> outputs/runs/<date>/<run B>":
        "placeholders for two run folders: tests/e2e/test_compare_cli.py compares real run folders and run ids",
    "esc-sweep compare A B C --rope 0.5 --format json":
        "placeholders for run folders: tests/e2e/test_compare_cli.py runs --rope and --format json on real runs",
    "esc-sweep nested hparams_search=esc50_optuna dataset=esc10 hydra.sweeper.n_trials=20":
        "5 outer folds x 21 trainings of real ESC-10: tests/e2e/test_nested_cli.py runs nested on tiny data "
        "(2 outer folds, 2 trials), the README's --plan line above runs as written",
    "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db":
        "a server that runs until stopped: tests/tracking/test_tracking.py::test_readme_ui_command_serves_the_runs "
        "starts it exactly as written and reads runs and figures from it",
}
# Heavier than the rest (timm backbones, sweeps of several trials): run with -m slow.
SLOW = ("model=resnet18", "model.name=efficientnet_b2", "experiment=quick_cpu")

# ESC-50's own ids and names, the 10 ESC-10 classes among them.
CLASSES = [(0, "dog", True), (1, "rooster", True), (2, "pig", False), (3, "cow", False), (10, "rain", True),
           (11, "sea_waves", True), (12, "crackling_fire", True), (20, "crying_baby", True),
           (21, "sneezing", True), (38, "clock_tick", True), (40, "helicopter", True), (41, "chainsaw", True)]
SAMPLE_RATE = 16000
CLIP_SECONDS = 0.5

TINY = {
    "dataset.clip_seconds": str(CLIP_SECONDS),
    "trainer.epochs": "1",
    "trainer.folds": "[1]",
    "trainer.batch_size": "16",
    "trainer.progress": "false",
    "features.n_mels": "32",
    "augmentation.crop_seconds": "0",  # no crops (quick_cpu's are 2.5 s: longer than these clips)
}
TINY_SWEEP = {
    "hydra.sweeper.n_trials": "2",
    "augmentation.time_mask_width": "0",  # up to 80 frames in esc50_optuna: these clips have 51
}


def readme_commands() -> list[str]:
    """Every command line of README.md's bash code blocks, comments dropped, in order."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(shlex.split(line, comments=True))
            if command:
                commands.append(command)
    return commands


def _normal(command: str) -> str:
    return " ".join(shlex.split(command, comments=True))


def _slow(command: str) -> bool:
    sweep = "-m" in shlex.split(command)[3:]  # python -m esc_sweep -m ...
    return sweep or any(mark in command.split() for mark in SLOW)


def _params():
    for command in readme_commands():
        if _normal(command) in {_normal(c) for c in SKIPPED}:
            continue
        marks = [pytest.mark.slow] if _slow(command) else []
        yield pytest.param(command, id=command[:80], marks=marks)


def make_esc50_root(root: Path, clips_per_fold: int = 2) -> None:
    """An ESC-50-layout root of tones: one pitch per class, every class in every fold."""
    (root / "audio").mkdir(parents=True)
    rows = []
    t = np.arange(int(SAMPLE_RATE * CLIP_SECONDS)) / SAMPLE_RATE
    for index, (target, name, esc10) in enumerate(CLASSES):
        for fold in range(1, 6):
            for k in range(clips_per_fold):
                source = f"{target:03d}{fold}{k}"
                stem = f"{fold}-{source}-A-{target}"
                noise = np.random.default_rng(1000 * index + 10 * fold + k).standard_normal(len(t))
                wave = 0.3 * np.sin(2 * np.pi * (150 + 90 * index) * t) + 0.01 * noise
                sf.write(root / "audio" / f"{stem}.wav", wave.astype(np.float32), SAMPLE_RATE)
                rows.append(dict(filename=f"{stem}.wav", fold=fold, target=target, category=name,
                                 esc10=str(esc10), src_file=source, take="A"))
    (root / "meta").mkdir()
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """One folder all README commands run in (as a user runs them in one), and their environment."""
    base = tmp_path_factory.mktemp("readme")
    make_esc50_root(base / "esc50")
    cwd = base / "work"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(ESC50_ROOT=str(base / "esc50"), ESC_SWEEP_CACHE=str(base / "cache"), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return cwd, env


def with_tiny_settings(tokens: list[str], cwd: Path, number: int) -> list[str]:
    """``tokens`` of a ``python -m esc_sweep`` command with TINY laid over (a key it sets is replaced)."""
    if any(flag in tokens for flag in ("--cfg", "--info", "--help", "-h", "--version")):
        return tokens  # prints and exits: nothing is trained
    settings = dict(TINY, **{"trainer.checkpoint_dir": str(cwd / "checkpoints")})
    if "dataset=synthetic" in tokens:
        settings["dataset.clips_per_class"] = "10"
    if "-m" in tokens[3:]:
        settings.update(TINY_SWEEP, **{"hydra.sweep.dir": str(cwd / f"sweep-{number}")})
    out = []
    for token in tokens:
        key = token.partition("=")[0]
        out.append(f"{key}={settings.pop(key)}" if "=" in token and key in settings else token)
    return out + [f"{key}={value}" for key, value in settings.items()]


def as_run(command: str, cwd: Path, number: int) -> tuple[list[str], dict[str, str]]:
    """The argv a user's shell would run with the venv active, and the command's own VAR=value settings."""
    tokens = shlex.split(command, comments=True)
    env = {}
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    program = tokens[0]
    if program in ("python", "python3"):
        tokens[0] = sys.executable
        if tokens[1:3] == ["-m", "esc_sweep"]:
            tokens = with_tiny_settings(tokens, cwd, number)
    elif (BIN / program).exists():
        tokens[0] = str(BIN / program)  # esc-sweep, mlflow: the venv's
    else:
        pytest.fail(f"README command {command!r}: no {program!r} in {BIN}; add it to SKIPPED with a reason")
    return tokens, env


def run(command: str, cwd: Path, env: dict[str, str], number: int) -> subprocess.CompletedProcess:
    argv, own_env = as_run(command, cwd, number)
    return subprocess.run(argv, cwd=cwd, env={**env, **own_env}, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("command", list(_params()))
def test_readme_command_runs(command, workspace):
    cwd, env = workspace
    commands = readme_commands()
    number = commands.index(command)
    if not command.startswith("python") and not (cwd / "mlruns" / "mlflow.db").exists():
        # A command that reads what training wrote (esc-sweep runs): the README's block trains first.
        before = next(c for c in reversed(commands[:number]) if c.startswith("python -m esc_sweep"))
        assert run(before, cwd, env, number - 1).returncode == 0
    results_before = set(cwd.glob("outputs/runs/*/*/results.json"))
    out = run(command, cwd, env, number)
    assert out.returncode == 0, f"README command failed: {command}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    argv, _ = as_run(command, cwd, number)
    trains = argv[1:3] == ["-m", "esc_sweep"] and "-m" not in argv[3:] and argv[-1] not in ("job", "defaults-tree")
    if trains:  # it really trained: one more results.json
        assert len(set(cwd.glob("outputs/runs/*/*/results.json")) - results_before) == 1, out.stderr[-3000:]


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    commands = {_normal(c) for c in readme_commands()}
    stale = [c for c in SKIPPED if _normal(c) not in commands]
    assert not stale, f"SKIPPED names commands the README no longer has: {stale}"
    run_here = [c for c in readme_commands() if _normal(c) not in {_normal(s) for s in SKIPPED}]
    assert len(run_here) >= 12, run_here  # the extraction found the README's commands
    assert all(reason.strip() for reason in SKIPPED.values())


def test_tiny_settings_replace_what_a_command_sets_and_add_the_rest(tmp_path):
    tokens = with_tiny_settings(["py", "-m", "esc_sweep", "-m", "hparams_search=arch_search",
                                 "hydra.sweeper.n_trials=40", "trainer.epochs=5"], tmp_path, 3)
    assert tokens.count("hydra.sweeper.n_trials=2") == 1 and "hydra.sweeper.n_trials=40" not in tokens
    assert "trainer.epochs=1" in tokens and "trainer.epochs=5" not in tokens
    assert f"hydra.sweep.dir={tmp_path / 'sweep-3'}" in tokens
    assert with_tiny_settings(["py", "-m", "esc_sweep", "--cfg", "job"], tmp_path, 0)[-1] == "job"
