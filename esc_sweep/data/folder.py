"""Your own audio (``dataset.kind: folder``).

Two layouts under ``dataset.root``:

* class sub-folders: ``root/<class name>/**/<clip>.<ext>``;
* a CSV (``dataset.csv``) with columns ``filename,label[,fold][,split]``,
  filenames relative to the root. A relative ``dataset.csv`` is looked up in
  the root first, then in the working directory. With ``dataset.protocol=holdout``
  the ``split`` column (``train`` / ``test``) is the split and folds are not used.

Class names are sorted; target ``t`` is ``class_names[t]``. Without a fold
column the clips are split into ``dataset.num_folds`` stratified folds
(``StratifiedKFold(shuffle=True, random_state=0)`` over the sorted clip list).
Clip ids are file paths relative to the root without the extension (unique
even when two classes both hold ``001.wav``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch

from esc_sweep.data import audio as audio_mod
from esc_sweep.data.clipset import ClipList, ClipSet, finish_clipset, protocol_of
from esc_sweep.data.clipset import option as _opt
from esc_sweep.data.csvfile import read_csv_rows
from esc_sweep.data.files import FileKey, walk_audio_files
from esc_sweep.errors import DataError
from esc_sweep.paths import printable_text, special_kind

log = logging.getLogger(__name__)


def resolve_root(dataset: Any) -> Path:
    root = _opt(dataset, "root", None)
    if not root:
        raise DataError("dataset.root is not set: point it at the folder holding your class sub-folders (dataset.kind=folder)")
    path = Path(os.path.expandvars(os.path.expanduser(str(root))))
    if not path.is_dir():
        what = special_kind(path) or ("a file" if path.is_file() else None)
        raise DataError(f"dataset root {path} is {what}, not a folder: fix dataset.root" if what else
                        f"dataset root {path} does not exist: fix dataset.root")
    return path


def resolve_csv(root: Path, csv_name: str) -> Path:
    path = Path(os.path.expandvars(os.path.expanduser(str(csv_name))))
    if not path.is_absolute():
        in_root = root / path
        path = in_root if in_root.is_file() or not path.is_file() else path.resolve()
    if not path.is_file():
        what = special_kind(path) or ("a folder" if path.is_dir() else None)
        problem = f"is {what}, not a CSV file" if what else "does not exist"
        raise DataError(f"dataset.csv {path} {problem}: give a path to a CSV with columns filename,label[,fold]")
    return path


def scan_subfolders(root: Path) -> list[tuple[str, str]]:
    """``(relative path, class name)`` for every audio file under ``root/<class>/``.

    Symbolic links are followed, but each folder is walked once per class (a
    loop such as ``dog/again -> .`` ends) and a file reached twice within a
    class (same device and inode) is counted once, at its first path in
    sorted order, so links cannot copy clips into several folds. A file
    reached from two classes has no single label: that is refused.
    """
    items: list[tuple[str, str]] = []
    owner: dict[FileKey, tuple[str, str]] = {}  # file -> (relative path, class) where first found
    repeats: list[str] = []

    def on_duplicate(path: Path, first: Path) -> None:
        repeats.append(_rel(path, root))

    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = printable_text(class_dir.name)  # a label, shown and logged everywhere: valid text
        for path, key in walk_audio_files(class_dir, audio_mod.is_audio_file, on_duplicate):
            rel = _rel(path, root)
            if key in owner:
                first_rel, first_label = owner[key]
                raise DataError(
                    f"dataset root {root}: {first_rel} (class {first_label}) and {rel} (class {label}) are the same "
                    f"file (a link), so it has no single label: remove one of them"
                )
            owner[key] = (rel, label)
            items.append((rel, label))
    if repeats:
        log.warning(
            "dataset root %s: %d audio file(s) reached twice through links were counted once (e.g. %s)",
            root, len(repeats), repeats[0],
        )
    if not items:
        exts = ", ".join(sorted(audio_mod.AUDIO_EXTENSIONS)[:6])
        raise DataError(
            f"dataset root {root} has no audio files in class sub-folders: expected {root}/<class>/<clip>.wav "
            f"(extensions {exts}, ...), or set dataset.csv"
        )
    return items


def _rel(path: Path, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def read_csv(
    root: Path, csv_path: Path, num_folds: int, need_split: bool = False
) -> tuple[list[tuple[str, str]], Optional[list[int]], Optional[list[str]]]:
    """``(relative path, label)`` per row, the folds when the CSV has a fold column, the splits when it has a
    split column (``need_split``: it must; the folds are then not read)."""
    header, raw_rows = read_csv_rows(
        csv_path, ("filename", "label"), "filename,label[,fold]",
        utf8_fix="save it as UTF-8 with columns filename,label[,fold]",
        invalid_fix="expected columns filename,label[,fold]",
        empty_fix="add rows filename,label[,fold]",
    )

    has_split = "split" in header
    if need_split and not has_split:
        raise DataError(f"{csv_path} has no split column: dataset.protocol=holdout needs columns "
                        f"filename,label,split (split = train or test), or set dataset.protocol=cv")
    has_fold = "fold" in header and not need_split
    splits: list[str] = []
    items: list[tuple[str, str]] = []
    folds: list[int] = []
    seen: dict[str, int] = {}
    for line, raw in enumerate(raw_rows, start=2):
        filename = (raw.get("filename") or "").strip().replace("\\", "/")
        label = (raw.get("label") or "").strip()
        if not filename or not label:
            raise DataError(f"{csv_path} line {line}: filename and label must not be empty")
        if filename in seen:
            raise DataError(f"{csv_path} lists {filename!r} twice (lines {seen[filename]} and {line}): remove the duplicate row")
        seen[filename] = line
        items.append((filename, label))
        if has_split:
            splits.append((raw.get("split") or "").strip().lower())
        if has_fold:
            text = (raw.get("fold") or "").strip()
            try:
                fold = int(float(text))
            except ValueError:
                raise DataError(f"{csv_path} line {line}: fold {text!r} is not an integer") from None
            if not 1 <= fold <= num_folds:
                raise DataError(
                    f"{csv_path} line {line}: fold {fold} is outside 1..{num_folds}: fix the fold or set dataset.num_folds"
                )
            folds.append(fold)
    return items, (folds if has_fold else None), (splits if has_split else None)


def stratified_folds(labels: list[int], num_folds: int, where: str) -> list[int]:
    """Fold (1..num_folds) per clip, stratified by label, seed 0."""
    from sklearn.model_selection import StratifiedKFold  # deferred: scikit-learn (~5 s), only for folders without folds

    counts: dict[int, int] = {}
    for t in labels:
        counts[t] = counts.get(t, 0) + 1
    if len(labels) < num_folds or max(counts.values()) < num_folds:
        raise DataError(
            f"{where}: {len(labels)} clips, at most {max(counts.values())} per class, cannot fill "
            f"dataset.num_folds={num_folds} folds: add clips, lower num_folds or give a fold column"
        )
    folds = [0] * len(labels)
    splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=0)
    dummy = [[0]] * len(labels)
    for k, (_, test) in enumerate(splitter.split(dummy, labels)):
        for i in test:
            folds[i] = k + 1
    return folds


def _require_clips_per_fold(targets: list[int], class_names: list[str], num_folds: int, where: str) -> None:
    """Refuse a class with fewer clips than folds: some fold would score it while training never saw it.

    (With fewer clips than folds the class cannot be in every fold's training and validation
    sets; a given fold column may put them all in one fold.)
    """
    counts = [0] * len(class_names)
    for t in targets:
        counts[t] += 1
    short = [(name, n) for name, n in zip(class_names, counts) if n < num_folds]
    if short:
        listed = ", ".join(f"{printable_text(name)!r} ({n})" for name, n in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise DataError(
            f"{where}: class(es) {listed}{more} have fewer clips than the {num_folds} folds "
            f"(dataset.num_folds): add clips, leave the class out (dataset.classes) or lower dataset.num_folds"
        )


def load_folder(dataset: Any, sample_rate: int, progress: bool = True) -> ClipSet:
    root = resolve_root(dataset)
    num_folds = int(_opt(dataset, "num_folds", 5))
    label_mode = str(_opt(dataset, "label", "target"))
    if label_mode != "target":
        raise DataError(f"dataset.label={label_mode!r} is only defined for ESC-50: use dataset.label=target for kind=folder")
    protocol = protocol_of(dataset)
    csv_name = _opt(dataset, "csv", None)
    splits = None
    if csv_name:
        csv_path = resolve_csv(root, str(csv_name))
        items, given_folds, splits = read_csv(root, csv_path, num_folds, need_split=protocol == "holdout")
        where = str(csv_path)
        # Existence only: a listed FIFO or folder gets its own error when read.
        missing = [rel for rel, _ in items if not os.path.lexists(root / rel)]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(items)} files listed in {csv_path} are missing under {root}: "
                f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}; fix the filenames (relative to dataset.root)"
            )
    else:
        if protocol == "holdout":
            raise DataError("dataset.protocol=holdout needs dataset.csv with a split column (train/test): "
                            "class sub-folders have no split")
        items = scan_subfolders(root)
        given_folds = None
        where = str(root)

    names = sorted({label for _, label in items})
    folds_all: Optional[list[int]] = None
    if protocol == "cv":
        if given_folds is None:
            folds_all = stratified_folds([names.index(label) for _, label in items], num_folds, where)
        else:
            folds_all = given_folds
            empty = sorted(set(range(1, num_folds + 1)) - set(folds_all))
            if empty:
                raise DataError(
                    f"{where}: fold(s) {empty} have no clips: every fold 1..{num_folds} needs clips "
                    f"(fix the fold column or set dataset.num_folds)"
                )

    # Ids are shown and logged (tables, figures, MLflow): a name that is not UTF-8 gets \\xNN escapes.
    # The paths keep the bytes on disk, so the file itself is still read.
    clip_ids = [printable_text(os.path.splitext(rel)[0]) for rel, _ in items]
    clips = ClipList(
        root=root,
        paths=[root / rel for rel, _ in items],
        clip_ids=clip_ids,
        labels=[label for _, label in items],
        groups=list(clip_ids),
        where=where,
        folds=folds_all,
        splits=splits if protocol == "holdout" else None,
        class_order=names,
    )

    def check(targets: torch.Tensor, class_names: list[str], folds: list[int]) -> None:
        if protocol == "cv":
            _require_clips_per_fold(targets.tolist(), class_names, num_folds, where)

    return finish_clipset(dataset, clips, sample_rate, kind="folder", num_folds=num_folds, protocol=protocol,
                          label_mode=label_mode, prefix=f"folder-{_opt(dataset, 'name', 'folder')}",
                          description=f"Decoding {_opt(dataset, 'name', 'folder')}", progress=progress,
                          before_decode=check, class_fix=": add a sub-folder (or CSV label) per class")
