"""Helpers shared by the benchmark scripts: config composition, machine facts, JSON.

The benchmarks compose the app's config exactly as ``python -m esc_sweep``
does (Hydra compose API over ``esc_sweep/conf/`` with the structured-config schema), so
any override the CLI takes works here too.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # running ``python benchmarks/x.py`` from a fresh clone
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from esc_sweep.config import register_configs  # noqa: E402
from esc_sweep.paths import CONFIG_DIR as CONF  # noqa: E402

# Without ESC-50 the benchmarks fall back to synthetic tones with ESC-50's clip
# length (5 s -> 501 frames at the default hop), so feature shapes and hence
# model cost match the real dataset.
SYNTHETIC_DEFAULTS = [
    "dataset=synthetic",
    "dataset.clip_seconds=5.0",
    "dataset.num_classes=10",
    "dataset.clips_per_class=20",
]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def with_defaults(overrides: Iterable[str], defaults: Iterable[str] = ()) -> list[str]:
    """``overrides`` plus each default whose key the user did not set.

    The dataset falls back to synthetic data when ESC50_ROOT is unset and the
    command line says nothing about the dataset.
    """
    overrides = list(overrides)
    keys = {_key(o) for o in overrides}
    extra = [d for d in defaults if _key(d) not in keys]
    mentions_dataset = any(k == "dataset" or k.startswith("dataset.") for k in keys)
    if not mentions_dataset and not os.environ.get("ESC50_ROOT"):
        extra = SYNTHETIC_DEFAULTS + extra
    return extra + overrides


def compose_config(overrides: list[str]) -> DictConfig:
    """The app's config for ``overrides`` (as ``python -m esc_sweep`` would compose it)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF)):
        return compose(config_name="config", overrides=overrides)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings cover it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system, all threads) of this process or of ``pid``; None where unknown.

    On a shared machine wall-clock rates move with other people's load; CPU
    time per clip moves much less, so the benchmarks record both.
    """
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on every platform
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """Facts needed to compare numbers between machines and commits."""
    import torchaudio

    status = _git("status", "--porcelain", "--untracked-files=no")
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        # Uncommitted edits to tracked files: the numbers may not match the commit alone.
        "git_dirty": bool(status) if status is not None else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "device": str(device),
        "device_name": _cpu_model(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def conventional_num_workers() -> int:
    """DataLoader workers a typical script would use here: all cores but one."""
    return max(0, (os.cpu_count() or 1) - 1)


def write_json(path: Path | str, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def fmt_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain monospace table (no terminal features, so it survives logs and CI)."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_main(main) -> None:
    """Run a benchmark's ``main``; a user mistake prints one line, as the esc_sweep CLI does."""
    from esc_sweep.errors import EscSweepError

    try:
        main()
    except EscSweepError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
