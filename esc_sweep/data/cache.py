"""On-disk cache of decoded waveforms.

A dataset is decoded once per (files fingerprint, sample rate, clip length)
and stored as a single float16 tensor file (``torch.save``) under the cache
folder: ``dataset.cache_dir``, else ``$ESC_SWEEP_CACHE``, else
``~/.cache/esc_sweep/waveforms``. Files are written atomically (temporary file
+ ``os.replace``), so concurrent runs never see a half-written cache.

The cache always holds every clip listed for a dataset root; class subsets
select rows from it, so different subsets share one decode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Optional, Sequence

import torch

from esc_sweep.data import audio
from esc_sweep.errors import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_F16_MAX = 65504.0


def default_cache_dir(cache_dir: Optional[str] = None) -> Path:
    """``cache_dir`` if set, else ``$ESC_SWEEP_CACHE``, else ``~/.cache/esc_sweep/waveforms``."""
    chosen = cache_dir or os.environ.get("ESC_SWEEP_CACHE") or "~/.cache/esc_sweep/waveforms"
    return Path(os.path.expandvars(os.path.expanduser(str(chosen))))


def files_fingerprint(paths: Sequence[Path], root: Optional[Path] = None) -> str:
    """Hash of the listed files: relative name, size and modification time."""
    h = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DataError(f"cannot read audio file {path}: {exc.strerror or exc}") from None
        name = os.path.relpath(path, root) if root is not None else os.path.basename(path)
        h.update(f"{Path(name).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def cache_path(cache_dir: Path, prefix: str, fingerprint: str, sample_rate: int, num_samples: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in prefix) or "dataset"
    return cache_dir / f"{safe}-{fingerprint}-{int(sample_rate)}hz-{int(num_samples)}.pt"


def load_waveforms(
    paths: Sequence[Path],
    clip_ids: Sequence[str],
    sample_rate: int,
    num_samples: int,
    *,
    cache_dir: Optional[str] = None,
    root: Optional[Path] = None,
    prefix: str = "dataset",
    description: str = "Decoding audio",
    progress: bool = True,
    num_workers: Optional[int] = None,
) -> torch.Tensor:
    """Decoded clips as a float16 tensor ``[len(paths), num_samples]``.

    Returns the cached tensor when one exists for these files; otherwise
    decodes every file (thread pool), stores the result and returns it.
    """
    paths = [Path(p) for p in paths]
    if len(paths) != len(clip_ids):
        raise ValueError("paths and clip_ids differ in length")
    folder = default_cache_dir(cache_dir)
    fp = files_fingerprint(paths, root)
    target = cache_path(folder, prefix, fp, sample_rate, num_samples)

    cached = _read_cache(target, clip_ids, sample_rate, num_samples)
    if cached is not None:
        log.debug("waveform cache hit: %s", target)
        return cached

    waveforms = decode_all(paths, sample_rate, num_samples, description=description, progress=progress, num_workers=num_workers)
    _write_cache(target, waveforms, list(clip_ids), sample_rate, num_samples)
    return waveforms


def decode_all(
    paths: Sequence[Path],
    sample_rate: int,
    num_samples: int,
    *,
    description: str = "Decoding audio",
    progress: bool = True,
    num_workers: Optional[int] = None,
) -> torch.Tensor:
    """Decode every file into a float16 tensor ``[N, num_samples]`` with a thread pool.

    Stops at the first broken file and raises its DataError.
    """
    n = len(paths)
    out = torch.empty((n, num_samples), dtype=torch.float16)
    if n == 0:
        return out
    workers = num_workers or min(8, (os.cpu_count() or 1) + 2)
    workers = max(1, min(workers, n))

    def work(i: int) -> None:
        wave = audio.decode(paths[i], sample_rate, num_samples)
        out[i] = wave.clamp_(-_F16_MAX, _F16_MAX).to(torch.float16)

    bar = _progress_bar(progress)
    lock = threading.Lock()
    # Resampling inside many threads each using all intra-op threads thrashes
    # small machines; one intra-op thread per worker is enough.
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with bar if bar is not None else _nullcontext():
            task = bar.add_task(description, total=n) if bar is not None else None

            def job(i: int) -> None:
                work(i)
                if bar is not None:
                    with lock:
                        bar.advance(task)

            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
            try:
                futures = [pool.submit(job, i) for i in range(n)]
                wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
            finally:
                # On an error or Ctrl-C, drop the files not started yet.
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        torch.set_num_threads(prev_threads)
    return out


def _read_cache(target: Path, clip_ids: Sequence[str], sample_rate: int, num_samples: int) -> Optional[torch.Tensor]:
    if not target.is_file():
        return None
    try:
        payload = torch.load(target, map_location="cpu", weights_only=True, mmap=True)
        ok = (
            isinstance(payload, dict)
            and payload.get("version") == CACHE_VERSION
            and payload.get("sample_rate") == int(sample_rate)
            and payload.get("num_samples") == int(num_samples)
            and list(payload.get("clip_ids", [])) == list(clip_ids)
        )
        wave = payload.get("waveforms") if ok else None
        if not (
            isinstance(wave, torch.Tensor)
            and wave.dtype == torch.float16
            and tuple(wave.shape) == (len(clip_ids), int(num_samples))
        ):
            log.warning("ignoring stale or foreign waveform cache %s; decoding again", target)
            return None
        return wave
    except Exception as exc:  # a corrupt cache is rebuilt, never fatal
        log.warning("ignoring unreadable waveform cache %s (%s); decoding again", target, exc)
        return None


def _write_cache(target: Path, waveforms: torch.Tensor, clip_ids: list, sample_rate: int, num_samples: int) -> None:
    payload = {
        "version": CACHE_VERSION,
        "sample_rate": int(sample_rate),
        "num_samples": int(num_samples),
        "clip_ids": clip_ids,
        "waveforms": waveforms,
    }
    tmp_name = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; let other users read the cache
        os.replace(tmp_name, target)
        tmp_name = None
        _write_meta(target, clip_ids, sample_rate, num_samples)
    except OSError as exc:
        log.warning(
            "could not write waveform cache %s (%s); set dataset.cache_dir or ESC_SWEEP_CACHE to a writable folder",
            target,
            exc,
        )
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def _write_meta(target: Path, clip_ids: list, sample_rate: int, num_samples: int) -> None:
    """A small human-readable sidecar, so users can tell cache files apart."""
    info = {"clips": len(clip_ids), "sample_rate": sample_rate, "num_samples": num_samples, "first": clip_ids[:3]}
    meta = target.with_suffix(".json")
    fd, tmp = tempfile.mkstemp(prefix=f".{meta.name}.", suffix=".tmp", dir=target.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    os.chmod(tmp, 0o644)
    os.replace(tmp, meta)


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
