"""Process-wide CPU settings, applied before torch is imported.

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
