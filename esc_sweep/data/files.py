"""Safe file-system access for datasets: regular files only, walks that end.

* Only regular files are ever opened. A FIFO named like a clip would block
  ``open()`` forever, a device could stream endlessly; both are refused with a
  one-line :class:`~esc_sweep.errors.DataError` naming the path.
* :func:`walk_audio_files` follows symbolic links (users link class folders in
  from elsewhere) but enters each directory at most once, so a link loop such
  as ``dog/again -> .`` ends, and yields each file (device, inode) at most
  once, so a file reached twice through links is counted once.
* :func:`refuse_same_files` rejects a listing in which two entries are the same
  file (a symbolic or hard link): the two rows could land in different folds
  and leak a recording from training into validation.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Sequence, Union

from esc_sweep.errors import DataError
from esc_sweep.paths import file_kind

PathLike = Union[str, os.PathLike]
FileKey = tuple[int, int]  # (st_dev, st_ino): the identity of a file, whatever path reaches it


def file_key(st: os.stat_result) -> FileKey:
    return (st.st_dev, st.st_ino)


def regular_stat(path: PathLike, what: str = "audio file") -> os.stat_result:
    """``os.stat(path)`` (links followed); DataError unless it is a readable regular file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if os.path.islink(path):
            reason = f"{reason} (a broken symbolic link)"
        raise DataError(f"cannot read {what} {os.fspath(path)}: {reason}") from None
    _require_regular(path, st, what)
    return st


def open_regular(path: PathLike, what: str = "audio file") -> tuple[BinaryIO, os.stat_result]:
    """Open a regular file for reading without ever blocking; returns it and its stat.

    ``os.stat`` first, so a FIFO or device is never opened at all; the open is
    non-blocking and re-checked with ``fstat``, so a file swapped for a FIFO
    in between cannot block either.
    """
    regular_stat(path, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise DataError(f"cannot read {what} {os.fspath(path)}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        _require_regular(path, st, what)
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


def _require_regular(path: PathLike, st: os.stat_result, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise DataError(
            f"{what} {os.fspath(path)} is not a regular file (it is {file_kind(st.st_mode)}): "
            f"replace it with a real file or remove it"
        )


def walk_audio_files(
    folder: Path,
    is_audio: Callable[[str], bool],
    on_duplicate: Optional[Callable[[Path, Path], None]] = None,
) -> Iterator[tuple[Path, FileKey]]:
    """``(path, file key)`` of every audio file under ``folder``, in sorted depth-first order.

    The order is that of ``os.walk(topdown=True)`` with sorted names: a
    folder's files, then each sub-folder in turn. Names starting with "." are
    skipped. Symbolic links are followed, but a directory already entered in
    this walk is not entered again (no loops), and a file already yielded
    (same device and inode) is skipped, after calling ``on_duplicate(path,
    first_path)``. A non-regular entry with an audio extension (FIFO, device)
    and an unreadable folder raise DataError rather than being skipped
    silently.
    """
    seen: dict[FileKey, Path] = {}
    entered: set[FileKey] = set()
    stack = [Path(folder)]
    while stack:
        current = stack.pop()
        try:
            key = file_key(os.stat(current))
        except OSError:
            continue  # a link to a folder that vanished; nothing to walk
        if key in entered:
            continue
        entered.add(key)
        files, dirs = _list_dir(current)
        for path in files:
            if not is_audio(path.name):
                continue
            fkey = file_key(regular_stat(path))
            if fkey in seen:
                if on_duplicate is not None:
                    on_duplicate(path, seen[fkey])
                continue
            seen[fkey] = path
            yield path, fkey
        stack.extend(reversed(dirs))  # pop() takes the first sorted sub-folder next


def _list_dir(folder: Path) -> tuple[list[Path], list[Path]]:
    """Sorted (files and other non-folders, sub-folders) of ``folder``, links followed."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc.strerror or exc}; fix its permissions") from None
    files: list[Path] = []
    dirs: list[Path] = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()  # follows links, like os.walk(followlinks=True)
        except OSError:
            is_dir = False  # unreadable or broken: listed as a file, reported if it is audio
        (dirs if is_dir else files).append(Path(entry.path))
    return files, dirs


def refuse_same_files(paths: Sequence[Path], root: Optional[Path] = None, what: str = "the dataset") -> list[os.stat_result]:
    """The stat of every path (regular files only); DataError when two paths are one file."""
    stats: list[os.stat_result] = []
    first: dict[FileKey, Path] = {}
    for path in paths:
        st = regular_stat(path)
        key = file_key(st)
        if key in first:
            raise DataError(
                f"{what} lists one audio file twice: {_rel(first[key], root)} and {_rel(path, root)} are the same "
                f"file (a link), so one recording could land in two folds; remove one of them"
            )
        first[key] = path
        stats.append(st)
    return stats


def _rel(path: Path, root: Optional[Path]) -> str:
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


__all__ = ["open_regular", "refuse_same_files", "regular_stat", "walk_audio_files"]
