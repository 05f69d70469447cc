"""Download and unpack the official ESC-50 archive.

* ``download_file``: urllib with a rich progress bar, resumable: bytes go to
  ``<archive>.part`` and a rerun asks the server for the rest (HTTP Range).
  With ``sha256`` the finished file is verified; a mismatch deletes it.
* ``safe_extract``: unzips, refusing any entry that would land outside the
  target folder (``..`` components, absolute paths, symbolic links).
* ``ensure_archive``: both of the above into ``dataset.download_dir`` (default
  ``~/.cache/esc_sweep/datasets``), then finds the folder holding the data
  set's marker file; ``ensure_esc50`` (``meta/esc50.csv``, the upstream zip
  wraps it in ``ESC-50-master/``) and UrbanSound8K (a .tar.gz holding
  ``UrbanSound8K/metadata/UrbanSound8K.csv``, MD5-verified) use it.
"""

from __future__ import annotations

import hashlib
import logging
import http.client
import os
import re
import shutil
import socket
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Any, Optional

from esc_sweep.data.clipset import option as _opt
from esc_sweep.errors import DownloadError
from esc_sweep.paths import download_dir

_CHUNK = 1 << 16
_MARKER = ".esc_sweep_complete"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_CONTENT_RANGE_UNSAT = re.compile(r"bytes\s+\*/(\d+)")

log = logging.getLogger(__name__)


class CorruptArchiveError(DownloadError):
    """The archive is not a readable zip file."""


def ensure_esc50(dataset: Any, progress: bool = True) -> Path:
    """Download (if needed) and extract ESC-50; return the folder holding meta/esc50.csv."""
    return ensure_archive(dataset, "esc50", Path("meta") / "esc50.csv", "ESC-50", progress=progress)


def ensure_archive(dataset: Any, prefix: str, marker_file: Path, title: str, progress: bool = True) -> Path:
    """Download (if needed, resuming) and extract the archive at ``dataset.url``; return the folder of the
    extracted tree that holds ``marker_file`` (e.g. ``meta/esc50.csv``).

    The archive is verified against ``dataset.archive_sha256`` and/or ``dataset.archive_md5`` when set
    (Zenodo publishes MD5s), extracted into a temporary folder beside it and moved into place in one
    step, so an interrupted extraction never looks complete. Zip and tar (.tar.gz, .tgz) archives.
    """
    url = str(_opt(dataset, "url", "") or "")
    if not url:
        raise DownloadError(f"dataset.url is empty: set it to the {title} archive URL or set dataset.root")
    sha256 = normalize_sha256(_opt(dataset, "archive_sha256", None))
    md5 = normalize_md5(_opt(dataset, "archive_md5", None))
    base = download_dir(_opt(dataset, "download_dir", None))
    key = hashlib.sha256(url.encode()).hexdigest()[:10]
    extract_dir = base / f"{prefix}-{key}"
    marker = extract_dir / _MARKER

    if marker.is_file():
        root = extract_dir / marker.read_text().strip()
        if (root / marker_file).is_file():
            return root

    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create download folder {base}: {exc.strerror or exc}; set dataset.download_dir") from None
    suffix = ".tar.gz" if _is_tar_name(url) else ".zip"
    archive = base / f"{prefix}-{key}{suffix}"
    hint = None if prefix == "esc50" else "check dataset.url and the network, or set dataset.root"
    download_file(url, archive, sha256=sha256, md5=md5, progress=progress, description=f"Downloading {title}",
                  hint=hint)

    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}-{key}.", dir=base))
    try:
        try:
            safe_extract(archive, tmp)
        except CorruptArchiveError:
            archive.unlink(missing_ok=True)  # a rerun downloads it again
            raise
        root = find_dataset_root(tmp, marker_file=marker_file, title=title)
        if extract_dir.exists():
            shutil.rmtree(extract_dir)
        os.replace(tmp, extract_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    relative = root.relative_to(tmp)
    (extract_dir / _MARKER).write_text(relative.as_posix() or ".")
    archive.unlink(missing_ok=True)  # extracted; the archive is no longer needed
    return extract_dir / relative


def _is_tar_name(url: str) -> bool:
    path = url.split("?", 1)[0].lower()
    return path.endswith((".tar.gz", ".tgz", ".tar"))


def normalize_md5(value: Optional[str], key: str = "dataset.archive_md5") -> Optional[str]:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().lower()
    if text.startswith("md5:"):
        text = text[len("md5:") :]
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise DownloadError(f"{key}={value!r} is not an MD5 hex digest (32 hex digits)")
    return text


def normalize_sha256(value: Optional[str], key: str = "dataset.archive_sha256") -> Optional[str]:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise DownloadError(f"{key}={value!r} is not a sha256 hex digest (64 hex digits)")
    return text


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_file(
    url: str,
    dest: Path,
    sha256: Optional[str] = None,
    progress: bool = True,
    description: str = "Downloading",
    timeout: float = 60.0,
    hint: Optional[str] = None,
    checksum_key: str = "dataset.archive_sha256",
    md5: Optional[str] = None,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify, return ``dest``.

    ``hint`` (what to do when the server cannot be reached) and ``checksum_key`` (the
    config key of ``sha256``) word the errors for callers other than the dataset download.
    """
    dest = Path(dest)
    sha256 = normalize_sha256(sha256, checksum_key)
    md5 = normalize_md5(md5)
    if dest.is_file():
        try:
            _verify(dest, url, sha256, checksum_key)
            _verify_md5(dest, url, md5)
            return dest
        except DownloadError:
            # Complete and verified when it was downloaded: it was damaged since. _verify deleted it.
            log.warning("the cached download %s of %s no longer matches its sha256 (damaged since it was "
                        "downloaded); it was deleted and is downloaded again", dest, url)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create download folder {dest.parent}: {exc.strerror or exc}") from None

    for attempt in range(2):
        offset = part.stat().st_size if part.is_file() else 0
        if _fetch(url, part, offset, progress, description, timeout, hint):
            break
        # The server could not resume from our offset: start over once.
        part.unlink(missing_ok=True)
        if attempt == 1:
            raise DownloadError(f"download of {url} could not be resumed or restarted: delete {part} and retry")
    _verify(part, url, sha256, checksum_key)
    _verify_md5(part, url, md5)
    os.replace(part, dest)
    return dest


def _fetch(
    url: str, part: Path, offset: int, progress: bool, description: str, timeout: float, hint: Optional[str] = None
) -> bool:
    """Append the missing bytes to ``part``. False when the partial file must be discarded."""
    headers = {"User-Agent": "esc_sweep", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    source_hint = hint or "check dataset.url or set dataset.root / ESC50_ROOT"
    hint = f"rerun to resume from {part}" if offset or part.exists() else (hint or "check the network or set dataset.root / ESC50_ROOT")
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            m = _CONTENT_RANGE_UNSAT.search(exc.headers.get("Content-Range", "") or "")
            exc.close()
            return bool(m) and int(m.group(1)) == offset  # already complete, or restart
        raise DownloadError(
            f"download of {url} failed: HTTP {exc.code} {exc.reason}; {source_hint}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"cannot download {url}: {reason}; {hint}") from None

    with resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and status == 206:
            m = _CONTENT_RANGE.search(resp.headers.get("Content-Range", "") or "")
            if not m or int(m.group(1)) != offset:
                return False
            total = int(m.group(3)) if m.group(3) != "*" else (offset + length if length is not None else None)
            mode = "ab"
        else:
            offset = 0  # the server sent the whole file
            total = length
            mode = "wb"
        bar = _bar(progress)
        try:
            with open(part, mode) as out, (bar if bar is not None else _Null()):
                task = bar.add_task(description, total=total, completed=offset) if bar is not None else None
                while True:
                    block = resp.read(_CHUNK)
                    if not block:
                        break
                    out.write(block)
                    if bar is not None:
                        bar.advance(task, len(block))
        except (OSError, http.client.HTTPException, socket.timeout, ValueError) as exc:
            if isinstance(exc, OSError) and exc.filename:
                raise DownloadError(f"cannot write {part}: {exc.strerror or exc}; free disk space or set dataset.download_dir") from None
            raise DownloadError(f"download of {url} was interrupted ({exc or type(exc).__name__}); rerun to resume from {part}") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"download of {url} stopped at {size} of {total} bytes; rerun to resume from {part}")
    return True


def _verify(path: Path, url: str, sha256: Optional[str], key: str = "dataset.archive_sha256") -> None:
    if sha256 is None:
        return
    actual = file_sha256(path)
    if actual != sha256:
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {path} (from {url}): expected sha256 {sha256}, got {actual}; the file was "
            f"deleted: fix {key} or retry the download"
        )


def _verify_md5(path: Path, url: str, md5: Optional[str], key: str = "dataset.archive_md5") -> None:
    if md5 is None:
        return
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != md5:
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {path} (from {url}): expected md5 {md5}, got {h.hexdigest()}; the file was "
            f"deleted: fix {key} or retry the download"
        )


def safe_extract(archive: Path, target: Path) -> list[Path]:
    """Extract a zip or tar archive into ``target``; refuse entries that would escape it. Returns the files written."""
    archive, target = Path(archive), Path(target)
    if tarfile.is_tarfile(archive):
        return _safe_extract_tar(archive, target)
    target.mkdir(parents=True, exist_ok=True)
    base = target.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            plan = []
            for info in zf.infolist():
                name = info.filename.replace("\\", "/")
                mode = (info.external_attr >> 16) & 0o170000
                if mode == stat.S_IFLNK:
                    raise DownloadError(f"refusing to extract {archive}: entry {info.filename!r} is a symbolic link")
                if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
                    raise DownloadError(f"refusing to extract {archive}: entry {info.filename!r} has an absolute path")
                dest = (base / name).resolve()
                if dest != base and base not in dest.parents:
                    raise DownloadError(
                        f"refusing to extract {archive}: entry {info.filename!r} would be written outside {target}"
                    )
                plan.append((info, dest))
            written: list[Path] = []
            for info, dest in plan:
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK * 16)
                written.append(dest)
            return written
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise CorruptArchiveError(f"archive {archive} is corrupt or not a zip ({exc}): delete it and download again") from None
    except OSError as exc:
        raise DownloadError(f"cannot extract {archive} into {target}: {exc.strerror or exc}") from None


def _safe_extract_tar(archive: Path, target: Path) -> list[Path]:
    """A tar archive through tarfile's ``data`` filter: no absolute paths, no ``..``, no links out of
    ``target``, no device files (PEP 706)."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                if member.issym() or member.islnk():
                    raise DownloadError(f"refusing to extract {archive}: entry {member.name!r} is a link")
            tf.extractall(target, filter="data")
    except tarfile.FilterError as exc:
        raise DownloadError(f"refusing to extract {archive}: {exc}") from None
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise CorruptArchiveError(f"archive {archive} is corrupt or not a tar file ({exc}): delete it and download again") from None
    except OSError as exc:
        raise DownloadError(f"cannot extract {archive} into {target}: {exc.strerror or exc}") from None
    return [target / m.name for m in members if m.isfile()]


def find_dataset_root(folder: Path, max_depth: int = 3, marker_file: Path = Path("meta") / "esc50.csv",
                      title: str = "ESC-50") -> Path:
    """The folder under ``folder`` (itself included) that holds ``marker_file`` (default ``meta/esc50.csv``)."""
    folder = Path(folder)
    level = [folder]
    for _ in range(max_depth + 1):
        hits = [d for d in level if (d / marker_file).is_file()]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise DownloadError(
                f"{folder} holds several {title} copies ({', '.join(str(h) for h in hits[:3])}): set dataset.root to one"
            )
        level = sorted(c for d in level for c in d.iterdir() if c.is_dir() and not c.is_symlink())
        if not level:
            break
    raise DownloadError(f"the extracted archive in {folder} has no {Path(marker_file).as_posix()}: check dataset.url "
                        f"points at the {title} archive")


def _bar(enabled: bool):
    if not enabled:
        return None
    from rich.progress import (  # deferred: rich.progress (~0.2 s), only when a download shows a bar
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
