"""Fold-level checkpoints so an interrupted cross-validation can resume.

A run's checkpoint folder is named by a hash of everything that changes its
results (the config minus tracking/display knobs, plus the dataset
fingerprint). Finished folds are saved there as JSON; a rerun of the same
command skips them. A cross-validation that completed is marked so, and the
next identical run starts afresh instead of replaying it.

A fold in training is also saved part-way, every ``trainer.checkpoint_every``
epochs (``FoldProgress``): weights, EMA, optimizer, schedule, history and every
random-number state the remaining epochs draw from, so the same command resumes
inside the fold and ends with the numbers an uninterrupted run gets. That file
goes once the fold's result is saved.

One run at a time trains into a checkpoint folder: ``FoldCheckpoints`` holds an
exclusive ``flock`` on ``<folder>/.lock`` for as long as the process lives (the
operating system drops it when the process dies, even by ``kill -9``), and a
second run of the same configuration is refused in one line naming the folder
and the other run's process id. A save that fails (full disk, read-only folder)
removes its temporary file and says which folder could not be written.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from esc_sweep.errors import TrainingError, damaged_file_reason
from esc_sweep.training.results import FoldResult

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None

log = logging.getLogger(__name__)

# Keys that do not change what a fold computes.
_IGNORED_KEYS = ("tracking", "trainer.progress", "trainer.resume", "trainer.checkpoint_dir",
                 "trainer.folds", "trainer.final_fit", "trainer.parallel_folds", "trainer.checkpoint_every",
                 "sweep.parent_run_id", "task_name")


def config_key(cfg: Any, fingerprint: str) -> str:
    data = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    for dotted in _IGNORED_KEYS:
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    blob = json.dumps({"config": data, "data": fingerprint}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _write_json(path: Path, data: Any) -> None:
    _write_bytes_atomically(path, json.dumps(data, indent=2).encode())


def _write_bytes_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``<path>.tmp``, then rename it over ``path``: a kill never leaves half a file.

    A failed write (full disk, read-only folder) removes the temporary file and raises
    TrainingError naming the folder; what was saved before stays as it was.
    """
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _save_failed(path, err) from None


def _save_failed(path: Path, err: OSError) -> TrainingError:
    folder = path.parent
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = f"the disk holding {folder} is full"
    elif err.errno == errno.EFBIG:
        reason = f"the file is larger than the file-size limit allows in {folder}"
    else:
        reason = f"{err.strerror or err} in {folder}"
    return TrainingError(f"cannot save checkpoint {path.name}: {reason}; free space there or set "
                         f"trainer.checkpoint_dir to a folder with room (what was saved before is kept)")


# --------------------------------------------------------------------------
# One run per checkpoint folder

LOCK_FILE = ".lock"

# The locks this process holds, by folder: flock conflicts between two open files even within one
# process, so every FoldCheckpoints of a folder shares one lock. It is released when the last of
# them is garbage-collected (a sweep's finished trials do not pile up open files) or the process ends.
_HELD_LOCKS: "weakref.WeakValueDictionary[str, _FolderLock]" = weakref.WeakValueDictionary()
_HELD_LOCKS_GUARD = threading.Lock()


class _FolderLock:
    """An open, flock-ed lock file; closing it (at collection or process death) releases the lock."""

    def __init__(self, fd: int):
        self.fd = fd
        weakref.finalize(self, os.close, fd)


def lock_folder(directory: Path) -> _FolderLock | None:
    """Hold ``directory`'s lock for this process; TrainingError naming the other run's pid when another has it.

    None where the platform has no ``fcntl`` (Windows): the folder is then not locked.
    """
    if fcntl is None:
        return None
    key = os.path.realpath(directory)
    with _HELD_LOCKS_GUARD:
        held = _HELD_LOCKS.get(key)
        if held is not None:
            return held
        try:
            fd = os.open(Path(directory) / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise _save_failed(Path(directory) / LOCK_FILE, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _lock_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise _save_failed(Path(directory) / LOCK_FILE, err) from None
            raise TrainingError(
                f"checkpoint folder {directory} is in use by another run of this configuration "
                f"(pid {holder}): wait for it to end or stop it, then run this command again to resume"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        lock = _FolderLock(fd)
        _HELD_LOCKS[key] = lock
        return lock


def _lock_holder(fd: int) -> str:
    """The process id the lock's holder wrote into the lock file ('unknown' if it has not yet)."""
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


# Bump when the saved training state changes shape: a file of another format is then ignored.
PROGRESS_FORMAT = 1

# The MLflow tracker updates state.json from the thread it was built on while the training
# thread may too: each read-modify-write holds this lock, so neither update is lost.
_STATE_LOCK = threading.Lock()


class FoldProgress:
    """One fold's training state, saved part-way so an interrupted run resumes inside the fold.

    ``every``: save after every that many epochs (``trainer.checkpoint_every``). With 0 nothing
    is saved, but a state saved earlier is still resumed: saving never changes a fold's numbers.
    """

    def __init__(self, path: Path, fold: int, every: int = 0):
        self.path, self.fold, self.every = Path(path), fold, every

    def due(self, epoch: int) -> bool:
        """Whether to save after ``epoch`` (counted from 1)."""
        return self.every > 0 and epoch % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        # Serialised in memory first: torch reports a failed file write as a RuntimeError
        # without the reason, while a plain write gives the OSError (full disk, read-only).
        buffer = io.BytesIO()
        torch.save({"format": PROGRESS_FORMAT, **state}, buffer)
        _write_bytes_atomically(self.path, buffer.getvalue())  # a kill leaves the previous save whole

    def load(self) -> dict[str, Any] | None:
        """The saved state (tensors on the CPU); None when absent or unreadable (the fold then starts over)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != PROGRESS_FORMAT:
                raise ValueError(f"not a format-{PROGRESS_FORMAT} training state")
        except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways (zip, pickle, EOF): all mean start over
            log.warning("fold %d: the state saved part-way, %s, is unreadable (damaged: %s); training the fold from "
                        "the start", self.fold, self.path, damaged_file_reason(exc))
            return None
        return state

    def saved_epoch(self) -> int | None:
        """The last epoch the saved state holds, without reading its tensors; None when absent or unreadable."""
        if not self.path.exists():
            return None
        try:
            return int(torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
        except Exception:  # noqa: BLE001 - only describes what is kept; load() warns when it matters
            return None

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(self.path.suffix + ".tmp").unlink(missing_ok=True)


@dataclass
class Kept:
    """What a checkpoint folder holds for a rerun: finished folds, and folds saved part-way (fold: epoch)."""

    directory: Path
    finished: list[int] = field(default_factory=list)
    in_progress: dict[int, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.finished or self.in_progress)


class FoldCheckpoints:
    """A run's checkpoint folder, locked for this process unless ``lock=False``.

    Fold workers of ``trainer.parallel_folds`` pass ``lock=False``: their parent holds the lock.
    """

    def __init__(self, directory: Path, lock: bool = True):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrainingError(f"cannot create the checkpoint folder {self.directory} ({err.strerror or err}): "
                                f"set trainer.checkpoint_dir to a writable folder") from None
        self._lock = lock_folder(self.directory) if lock else None

    def _fold_path(self, fold: int) -> Path:
        return self.directory / f"fold_{fold}.json"

    def load(self, fold: int) -> FoldResult | None:
        """The saved result of ``fold``; None when absent or unreadable (the fold is then rerun)."""
        path = self._fold_path(fold)
        if not path.exists():
            return None
        try:
            return FoldResult.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Saves are atomic, but a copied, hand-edited or disk-full file can still
            # be damaged: recomputing one fold beats failing the whole run.
            log.warning("fold %d checkpoint %s is unreadable (damaged: %s: %s); training the fold again",
                        fold, path, type(exc).__name__, exc)
            return None

    def save(self, result: FoldResult) -> None:
        _write_json(self._fold_path(result.fold), result.to_dict())
        self.progress(result.fold).discard()  # the fold's result is saved whole: its part-way state is spent

    def progress(self, fold: int, every: int = 0) -> FoldProgress:
        """Fold ``fold``'s state saved part-way (``every``: save every that many epochs, 0 never)."""
        return FoldProgress(self.directory / f"fold_{fold}.in_progress.pt", fold, every)

    def kept(self, folds: list[int] | None = None) -> Kept:
        """The finished folds and part-way states here (of ``folds`` only, when given)."""
        if folds is None:
            names = (re.fullmatch(r"fold_(\d+)\.(json|in_progress\.pt)", p.name) for p in self.directory.iterdir())
            folds = [int(match.group(1)) for match in names if match]
        kept = Kept(self.directory)
        for fold in sorted(set(folds)):
            if self._fold_path(fold).exists():
                kept.finished.append(fold)
            elif (epoch := self.progress(fold).saved_epoch()) is not None:
                kept.in_progress[fold] = epoch
        return kept

    @property
    def state(self) -> dict[str, Any]:
        path = self.directory / "state.json"
        if not path.exists():
            return {}
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("checkpoint state %s is unreadable (damaged: %s); ignoring it", path, exc)
            return {}
        return state if isinstance(state, dict) else {}

    def update_state(self, **values: Any) -> None:
        with _STATE_LOCK:
            _write_json(self.directory / "state.json", {**self.state, **values})

    def is_complete(self) -> bool:
        return bool(self.state.get("complete"))

    def completed_folds(self) -> list[int] | None:
        """The folds of the run that completed here, or None when none completed."""
        if not self.is_complete():
            return None
        folds = self.state.get("completed_folds")
        return sorted(folds) if isinstance(folds, list) else []

    def mark_complete(self, folds: list[int] | None = None) -> None:
        self.update_state(complete=True, completed_folds=sorted(folds or []))

    def reopen(self) -> None:
        """Keep the finished folds for a run that asks for other folds (e.g. all five after fold 1 alone)."""
        self.update_state(complete=False, completed_folds=None)

    def reset(self) -> None:
        """Empty the folder, keeping its lock file (another run must still find it locked)."""
        for entry in self.directory.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
