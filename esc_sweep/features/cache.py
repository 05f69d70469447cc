"""On-disk cache of computed spectrograms, for CPU runs.

On a 2-core CPU the log-mels of all 2000 ESC-50 clips take ~5 s to compute,
half of a second start; read back from disk they take a fraction of a second.
(On a GPU computing them takes milliseconds, so GPU runs do not use this.)

A file is keyed by the clips (their fingerprint plus a sample of the waveform
values, so edited audio is never served stale features) and the resolved
features config. The values are exactly what was computed (float32), so a run
that reads the cache trains exactly like the one that wrote it. Each file is
hundreds of MB (2 GB for a full STFT): only the most recently used are kept,
at most ``MAX_FILES`` files and ``MAX_BYTES`` in all (the newest always stays).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MAX_FILES = 4
MAX_BYTES = 2 * 1024**3


def cache_key(fingerprint: str, waveforms: torch.Tensor, features: Mapping[str, Any]) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}\0{fingerprint}\0{tuple(waveforms.shape)}\0".encode())
    # A strided sample of the values: cheap, and it changes when any clip's audio does.
    h.update(waveforms.reshape(-1)[::997].float().numpy().tobytes())
    h.update(json.dumps(dict(features), sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def cached_features(folder: Path, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The features stored under ``key`` in ``folder``, else ``compute()`` (then stored)."""
    path = folder / f"features-{key}.pt"
    if path.is_file():
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)
            os.utime(path)  # most recently used: kept longest
            log.debug("feature cache hit: %s", path)
            return features
        except Exception as exc:  # a damaged file is recomputed, never fatal
            log.warning("ignoring unreadable feature cache %s (%s); computing the features again", path, exc)
    features = compute()
    try:
        _write(path, features)
        _keep_newest(folder, MAX_FILES, MAX_BYTES)
    except (OSError, RuntimeError) as exc:  # a full or read-only disk costs speed, not the run
        # (torch.save reports a failed write as RuntimeError from its zip writer, not OSError)
        log.warning("could not write the feature cache %s (%s); going on without it",
                    path, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return features


def _write(path: Path, features: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".features-", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(features.cpu().contiguous(), tmp)
        os.replace(tmp, path)  # atomic: concurrent runs never read half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _keep_newest(folder: Path, max_files: int, max_bytes: int) -> None:
    files = sorted(folder.glob("features-*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for rank, path in enumerate(files):
        total += path.stat().st_size
        if rank == 0 or (rank < max_files and total <= max_bytes):
            continue
        try:
            path.unlink()
        except OSError:
            pass
