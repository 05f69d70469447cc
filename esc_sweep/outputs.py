"""Where a command may write a file the user names: never over something the user has.

``esc-sweep predict --output`` (and ``plots --out``) write only

* a new file, or a file an earlier ``predict`` wrote (recognised by its first
  bytes: ``PREDICT_MARKERS``), never any other existing file;
* outside the folders esc_sweep keeps state in: a bundle (``bundle.json`` with
  ``model.pt`` or ``members/``), a run's output folder (``.hydra/``), a
  fold-checkpoint folder (``fold_<n>.json``, or ``state.json`` with ``.lock``)
  and an MLflow store (``mlflow.db``, or a folder named ``mlruns``).

Every refusal is one ``EscSweepError`` line naming the path and why. Imports nothing heavy.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Callable, Iterable, Optional

from esc_sweep.errors import EscSweepError
from esc_sweep.paths import file_kind

# How every predict output starts (the JSON document's first key, the CSV header, the table's title).
WRITTEN_BY_KEY, WRITTEN_BY = "written_by", "esc-sweep predict"
PREDICT_JSON_MARKER = f'"{WRITTEN_BY_KEY}": "{WRITTEN_BY}"'  # json.dumps writes the first key so
CSV_HEADER = "file,rank,label,probability"
TABLE_TITLE = "Predictions ("
_PREFIX_BYTES = 4096

_FOLD_FILE = re.compile(r"fold_\d+\.(json|in_progress\.pt)")


def kept_folder_kind(folder: Path) -> Optional[str]:
    """What esc_sweep keeps in ``folder`` ('a model bundle', 'a run's output folder', ...), else None.

    Recognised by names esc_sweep writes together, so a user's own ``results.json`` or
    ``.lock`` higher up does not wall off everything below it.
    """
    try:
        names = set(os.listdir(folder))
    except OSError:
        return None
    if "bundle.json" in names and ("model.pt" in names or "members" in names):
        return "a model bundle"
    if ".hydra" in names:
        return "a run's output folder"
    if any(_FOLD_FILE.fullmatch(n) for n in names) or {"state.json", ".lock"} <= names:
        return "a fold-checkpoint folder"
    if folder.name == "mlruns" or "mlflow.db" in names:
        return "an MLflow store"
    return None


def enclosing_kept_folder(path: Path) -> Optional[tuple[Path, str]]:
    """The innermost folder holding ``path`` that esc_sweep keeps state in, with its kind."""
    for folder in Path(path).parents:
        kind = kept_folder_kind(folder)
        if kind is not None:
            return folder, kind
    return None


def is_predict_output(path: Path) -> bool:
    """Whether the existing file ``path`` was written by ``esc-sweep predict`` (any of its formats)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_PREFIX_BYTES).decode("utf-8", "replace")
    except OSError:
        return False
    if head.startswith(CSV_HEADER + "\n"):
        return True
    stripped = head.lstrip()
    if stripped.startswith("{") and PREDICT_JSON_MARKER in stripped[:200]:
        return True
    # Written before the marker existed: the document's first two keys were always these.
    if stripped.startswith('{\n  "bundle": ') and '\n  "model": ' in stripped:
        return True
    return stripped.startswith(TABLE_TITLE)


def check_output_file(output: str, inputs: Iterable[Path] = (), option: str = "--output",
                      is_audio: Optional[Callable[[Path], bool]] = None) -> Path:
    """The path to write ``output`` to, or EscSweepError (one line) when writing there could destroy something.

    ``inputs``: the files the command reads, never to be written over; ``is_audio`` tells an
    audio file (refused with its own message; any existing file not ours is refused anyway).
    """
    target = Path(output).expanduser()
    resolved = target.resolve()
    if any(resolved == Path(f).resolve() for f in inputs):
        raise EscSweepError(f"{option} {output} is an input of this command: refusing to write predictions over "
                            f"it; name a new .csv, .json or .txt file")
    kept = enclosing_kept_folder(resolved)
    if kept is not None:
        folder, kind = kept
        raise EscSweepError(f"{option} {output} lies inside {folder}, {kind}: esc_sweep does not write into "
                            f"it; name a file elsewhere")
    try:
        st = os.stat(resolved)
    except FileNotFoundError:
        return target
    except OSError as err:
        raise EscSweepError(f"cannot use {option} {output}: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        what = file_kind(st.st_mode)
        raise EscSweepError(f"{option} {output} is {what}: name a new file to write to")
    if is_audio is not None and is_audio(resolved):
        raise EscSweepError(f"{option} {output} is an audio file: refusing to write predictions over it; "
                            f"name a .csv, .json or .txt file")
    if not is_predict_output(resolved):
        raise EscSweepError(f"{option} {output} already exists and was not written by esc-sweep predict: "
                            f"refusing to replace it; name a new file or move it away")
    return target


def check_output_folder(output: str, option: str = "--out") -> Path:
    """A folder to write new files into: not (inside) a folder esc_sweep keeps state in, not a file."""
    target = Path(output).expanduser()
    resolved = target.resolve()
    kind = kept_folder_kind(resolved) if resolved.is_dir() else None
    kept = (resolved, kind) if kind is not None else enclosing_kept_folder(resolved)
    if kept is not None:
        raise EscSweepError(f"{option} {output}: {kept[0]} is {kept[1]}: esc_sweep does not write into it; "
                            f"name another folder")
    if resolved.exists() and not resolved.is_dir():
        raise EscSweepError(f"{option} {output} is not a folder: name a folder for the files")
    return target
