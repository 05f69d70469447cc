"""On-disk cache of decoded waveforms.

A dataset is decoded once per (files fingerprint: names and contents, sample
rate, clip length) and stored as a single float16 tensor file (``torch.save``) under the cache
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
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from esc_sweep.console import phase
from esc_sweep.data import audio
from esc_sweep.data.files import open_regular, refuse_same_files
from esc_sweep.paths import waveform_cache_dir

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_F16_MAX = 65504.0
_MEMO_VERSION = 1
_DIGEST_CHUNK = 1 << 20
_RACY_NS = 2_000_000_000


def default_cache_dir(cache_dir: Optional[str] = None) -> Path:
    """``cache_dir`` if set, else ``$ESC_SWEEP_CACHE``, else ``~/.cache/esc_sweep/waveforms`` (esc_sweep.paths)."""
    return waveform_cache_dir(cache_dir)


def files_fingerprint(paths: Sequence[Path], root: Optional[Path] = None, digests: Optional[Sequence[str]] = None) -> str:
    """Hash of the listed files: relative name, size and content digest.

    Content, not modification times: audio re-exported with the same sizes
    (and even the same times) gets a new fingerprint, while a copy of the same
    files elsewhere keeps it. ``digests`` are :func:`content_digests` of
    ``paths`` when the caller has them already.
    """
    if digests is None:
        digests = content_digests(paths, root)
    if len(digests) != len(paths):
        raise ValueError("paths and digests differ in length")
    h = hashlib.sha256()
    for path, digest in zip(paths, digests):
        name = os.path.relpath(path, root) if root is not None else os.path.basename(path)
        # os.fsencode: the name's bytes on disk, so a name that is not valid UTF-8 hashes too
        # (and a valid one hashes exactly as before).
        h.update(os.fsencode(Path(name).as_posix()) + f"\0{digest}\n".encode())
    return h.hexdigest()[:20]


def content_digests(paths: Sequence[Path], root: Optional[Path] = None, cache_dir: Optional[Path] = None) -> list[str]:
    """Per file, a hash of its size and bytes (blake2b-128, hex).

    Refuses non-regular files and two paths that are one file (see
    :func:`~esc_sweep.data.files.refuse_same_files`). With ``cache_dir``,
    digests are remembered there keyed by the file's full stat (size, mtime,
    ctime, inode, device): ctime changes on every write and cannot be set
    back by copy tools, so an unchanged stat means unchanged bytes, and a
    warm start costs one ``stat`` per file instead of reading every byte.
    """
    stats = refuse_same_files(paths, root, what=f"dataset {root}" if root is not None else "the dataset")
    memo_file = _memo_path(cache_dir, root) if cache_dir is not None else None
    memo = _read_memo(memo_file) if memo_file is not None else {}
    digests: list[str] = []
    changed = False
    # A file changed within the timestamp granularity of its last change could
    # change again with an identical stat ("racily clean", as git calls it):
    # only digests of files unchanged for a while are remembered.
    settled = time.time_ns() - _RACY_NS
    for path, st in zip(paths, stats):
        key = os.path.abspath(os.fspath(path))
        ident = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
        entry = memo.get(key)
        if isinstance(entry, list) and entry[:-1] == ident:
            digests.append(str(entry[-1]))
            continue
        digest = _file_digest(path)
        digests.append(digest)
        if st.st_ctime_ns < settled and st.st_mtime_ns < settled:
            memo[key] = [*ident, digest]
            changed = True
    if changed and memo_file is not None:
        _write_memo(memo_file, memo)
    return digests


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    fh, st = open_regular(path)
    with fh:
        h.update(f"{st.st_size}\0".encode())
        while True:
            chunk = fh.read(_DIGEST_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def _memo_path(cache_dir: Path, root: Optional[Path]) -> Path:
    where = os.path.abspath(root) if root is not None else "(no root)"
    return Path(cache_dir) / f"digests-{hashlib.sha256(os.fsencode(where)).hexdigest()[:16]}.json"


def _read_memo(memo_file: Path) -> dict:
    try:
        with open(memo_file) as fh:
            memo = json.load(fh)
        ok = isinstance(memo, dict) and memo.get("version") == _MEMO_VERSION and isinstance(memo.get("files"), dict)
        return memo["files"] if ok else {}
    except (OSError, ValueError):
        return {}  # no memo yet, or a broken one: hash the files again


def _write_memo(memo_file: Path, files: dict) -> None:
    """Atomic write; a failure only costs rehashing next time."""
    tmp_name = None
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{memo_file.name}.", suffix=".tmp", dir=memo_file.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump({"version": _MEMO_VERSION, "files": files}, fh, separators=(",", ":"))
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, memo_file)
        tmp_name = None
    except OSError as exc:
        log.debug("could not write the file digest memo %s (%s)", memo_file, exc)
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


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
    digests: Optional[Sequence[str]] = None,
) -> torch.Tensor:
    """Decoded clips as a float16 tensor ``[len(paths), num_samples]``.

    Returns the cached tensor when one exists for these files (same names
    and contents); otherwise decodes every file (thread pool), stores the
    result and returns it. ``digests``: :func:`content_digests` of ``paths``
    if the caller computed them already.
    """
    paths = [Path(p) for p in paths]
    if len(paths) != len(clip_ids):
        raise ValueError("paths and clip_ids differ in length")
    folder = default_cache_dir(cache_dir)
    if digests is None:
        digests = content_digests(paths, root, folder)
    fp = files_fingerprint(paths, root, digests)
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

    run_in_threads(work, n, workers, description, progress)
    return out


def run_in_threads(work: Callable[[int], None], n: int, workers: int, description: str, progress: bool) -> None:
    """``work(i)`` for i in 0..n-1 on a thread pool, with a progress bar; the first error is raised.

    Resampling inside many threads each using all intra-op threads thrashes small machines: one
    intra-op thread per worker is enough. On an error or Ctrl-C the files not started are dropped.
    """
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # A bar with an ETA on a terminal, else a plain line now and then (esc_sweep.console.phase).
        with phase(description, n, enabled=progress, unit="files") as bar:

            def job(i: int) -> None:
                work(i)
                bar.advance()  # thread-safe

            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
            try:
                futures = [pool.submit(job, i) for i in range(n)]
                wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        torch.set_num_threads(prev_threads)


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


def save_cache_file(target: Path, payload: dict) -> bool:
    """``torch.save(payload)`` to ``target`` atomically (a temp file, fsync, rename); False if it could not.

    A cache that cannot be written is a warning, never an error: the run goes on without it.
    """
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
        return True
    except OSError as exc:
        log.warning(
            "could not write waveform cache %s (%s); set dataset.cache_dir or ESC_SWEEP_CACHE to a writable folder",
            target,
            exc,
        )
        return False
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def _write_cache(target: Path, waveforms: torch.Tensor, clip_ids: list, sample_rate: int, num_samples: int) -> None:
    payload = {
        "version": CACHE_VERSION,
        "sample_rate": int(sample_rate),
        "num_samples": int(num_samples),
        "clip_ids": clip_ids,
        "waveforms": waveforms,
    }
    if save_cache_file(target, payload):
        _write_meta(target, clip_ids, sample_rate, num_samples)


def _write_meta(target: Path, clip_ids: list, sample_rate: int, num_samples: int) -> None:
    """A small human-readable sidecar, so users can tell cache files apart."""
    info = {"clips": len(clip_ids), "sample_rate": sample_rate, "num_samples": num_samples, "first": clip_ids[:3]}
    meta = target.with_suffix(".json")
    fd, tmp = tempfile.mkstemp(prefix=f".{meta.name}.", suffix=".tmp", dir=target.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    os.chmod(tmp, 0o644)
    os.replace(tmp, meta)
