"""The install a new user gets: exact torch pins, a current lock, identical install lines."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COUPLED = ("torch", "torchaudio", "torchvision")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _exact_pins() -> dict[str, str]:
    pins = {}
    for dep in _pyproject()["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)", dep.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if match and ";" not in line.split("#")[0]:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_abi_coupled_packages_are_pinned_exactly_and_locked_alike():
    pins, lock = _exact_pins(), _lock_pins()
    for name in COUPLED:
        assert name in pins, f"{name} is not pinned with == in pyproject.toml"
        assert lock.get(name) == pins[name], f"constraints.txt pins {name}=={lock.get(name)}, pyproject {pins[name]}"


def test_installed_torch_stack_loads_together_and_matches_the_pins():
    """A fresh interpreter imports torch and torchaudio and runs torchaudio's compiled code."""
    code = (
        "import torch, torchaudio, torchvision, json\n"
        "x = torch.randn(1, 4000)\n"
        "mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=256, n_mels=16)(x)\n"
        "y = torchaudio.functional.resample(x, 16000, 8000)\n"
        "assert mel.shape[1] == 16 and y.shape[-1] == 2000\n"
        "print(json.dumps([torch.__version__, torchaudio.__version__, torchvision.__version__]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    versions = dict(zip(COUPLED, __import__("json").loads(out.stdout.strip().splitlines()[-1])))
    pins = _exact_pins()
    for name, version in versions.items():
        assert version.split("+")[0] == pins[name], f"installed {name} {version}, pinned {pins[name]}"


def _readme_command_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_has_two_lines_and_ci_runs_the_test_line_verbatim():
    lines = _readme_command_lines()
    assert len(lines) == 2, lines
    install_run, install_test = lines
    assert install_run.endswith("python -m esc_sweep") and install_test.endswith("python -m pytest")
    for line in lines:
        assert "-c constraints.txt" in line, f"README install line does not use the lock: {line}"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert install_test in ci, ".ci/run does not run the README's test line verbatim"
    assert "bash scripts/check_wheel.sh" in ci


def test_every_config_file_is_package_data():
    """pyproject's package-data globs match every YAML of the config tree (what a wheel ships)."""
    globs = _pyproject()["tool"]["setuptools"]["package-data"]["esc_sweep"]
    package = REPO / "esc_sweep"
    shipped = {p for pattern in globs for p in package.glob(pattern)}
    every = set((package / "conf").rglob("*.yaml"))
    assert len(every) > 20 and every == shipped, sorted(str(p) for p in every - shipped)


@pytest.mark.skipif(shutil.which("uv") is None and not (Path(sys.executable).parent / "uv").exists(),
                    reason="uv (a dev dependency) is not installed")
def test_lock_matches_pyproject():
    """scripts/lock.sh --check re-resolves pyproject.toml against the lock (needs the package registry)."""
    env = {**__import__("os").environ, "PATH": f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}"}
    out = subprocess.run(["bash", "scripts/lock.sh", "--check"], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env=env)
    if out.returncode != 0 and ("error sending request" in out.stderr or "Failed to fetch" in out.stderr):
        pytest.skip(f"package registry unreachable: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_version_flag_prints_package_and_torch_versions():
    from esc_sweep import __version__

    for argv in (["-m", "esc_sweep", "--version"],):
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd="/")
        assert out.returncode == 0, out.stderr
        assert f"esc_sweep {__version__}" in out.stdout
        assert f"torch {_exact_pins()['torch']}" in out.stdout and "torchaudio" in out.stdout
        assert "CUDA" in out.stdout or "CPU-only" in out.stdout
    script = Path(sys.executable).parent / "esc-sweep"
    if script.exists():
        out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=300, cwd="/")
        assert out.returncode == 0 and f"esc_sweep {__version__}" in out.stdout
