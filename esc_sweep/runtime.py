"""Process-wide runtime set-up: CPU settings applied before torch is imported (``configure``),
the training device (``pick_device``) and seeding (``seed_everything``).

The CPU settings:

Measured on a shared 2-core machine (benchmarks/README.md): glibc returns
large freed buffers (a step's activations) to the kernel and page-faults them
back in on the next step, and spinning OpenMP threads steal time from the
working one. Keeping freed memory in the heap and waiting passively roughly
halved the wall time of a small cross-validation (189 s -> 101 s).
"""

from __future__ import annotations

import ctypes
import os
import sys

from esc_sweep.errors import ConfigError


def configure() -> None:
    # Must run before torch loads its OpenMP runtime; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        libc.mallopt(m_mmap_max, 0)  # keep freed activations in the heap
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def pick_device(name: str):
    """``trainer.device``: ``auto`` is the first GPU when there is one, else the CPU."""
    import torch  # deferred: torch (~3 s), and configure() must run before torch loads

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r}, but no CUDA device is available; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"trainer.device={name!r}, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def seed_everything(seed: int, deterministic: bool, compile: bool = False) -> None:
    import torch  # deferred: torch (~3 s), and configure() must run before torch loads

    torch.manual_seed(seed)
    if deterministic:
        if compile:  # torch.compile reads inductor's own flag, which only this call sets
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:  # the same core flag, without importing torch._inductor (~1 s per process)
            torch.set_deterministic_debug_mode("warn")
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
