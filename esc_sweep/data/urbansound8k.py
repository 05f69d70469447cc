"""UrbanSound8K in its official release layout (``dataset.kind: urbansound8k``).

``dataset.root`` is the extracted ``UrbanSound8K/`` folder::

    UrbanSound8K/metadata/UrbanSound8K.csv   slice_file_name,fsID,start,end,salience,fold,classID,class
    UrbanSound8K/audio/fold1/<slice_file_name> ... audio/fold10/...

8732 clips of up to 4 s, 10 classes, 10 official folds. The folds must be kept
(the authors' warning: slices of one Freesound recording, ``fsID``, are all in
one fold, and reshuffling them inflates accuracy). ``fsID`` is each clip's
group, so ``trainer.validation=inner`` also keeps recordings whole. Target
``t`` is the class with ``classID`` ``t`` (the release's own numbering).

Not found at ``dataset.root`` (or ``$URBANSOUND8K_ROOT``): downloaded from
Zenodo (record 1203745, ``dataset.url``), MD5-verified, resumable, extracted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from esc_sweep.data.clipset import ClipList, ClipSet, finish_clipset, protocol_of, resolve_path
from esc_sweep.data.clipset import option as _opt
from esc_sweep.data.csvfile import read_csv_rows
from esc_sweep.data.download import ensure_archive
from esc_sweep.errors import DataError

NUM_FOLDS = 10
METADATA = Path("metadata") / "UrbanSound8K.csv"
COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
ENV = "URBANSOUND8K_ROOT"


def resolve_root(dataset: Any, progress: bool = True) -> Path:
    """dataset.root, else $URBANSOUND8K_ROOT, else the download (when dataset.download)."""
    root, source = _opt(dataset, "root", None), "dataset.root"
    if not root:
        root, source = os.environ.get(ENV) or None, ENV
    if not root:
        if not bool(_opt(dataset, "download", False)):
            raise DataError(f"UrbanSound8K not found: set dataset.root=... (the extracted UrbanSound8K/ folder) "
                            f"or {ENV}, or allow dataset.download=true")
        return ensure_archive(dataset, "urbansound8k", METADATA, "UrbanSound8K", progress=progress)
    path = resolve_path(root)
    if not path.is_dir():
        raise DataError(f"UrbanSound8K root {path} (from {source}) does not exist: point {source} at the "
                        f"extracted UrbanSound8K/ folder")
    if not (path / METADATA).is_file():
        raise DataError(f"UrbanSound8K root {path} (from {source}) has no {METADATA.as_posix()}: point {source} at "
                        f"the folder holding metadata/ and audio/fold1..fold10 (the extracted UrbanSound8K/)")
    return path


def read_clips(root: Path) -> ClipList:
    csv_path = root / METADATA
    fix = "replace it with the official metadata/UrbanSound8K.csv"
    _, rows = read_csv_rows(csv_path, COLUMNS, ",".join(COLUMNS), utf8_fix=fix, invalid_fix=fix, empty_fix=fix)
    names: dict[int, str] = {}
    paths, ids, labels, groups, folds, missing = [], [], [], [], [], []
    seen: dict[str, int] = {}
    for line, raw in enumerate(rows, start=2):
        name = (raw.get("slice_file_name") or "").strip()
        label = (raw.get("class") or "").strip()
        fold = _int(raw.get("fold"), "fold", csv_path, line)
        class_id = _int(raw.get("classID"), "classID", csv_path, line)
        if not name or not label:
            raise DataError(f"{csv_path} line {line}: slice_file_name and class must not be empty")
        if not 1 <= fold <= NUM_FOLDS:
            raise DataError(f"{csv_path} line {line}: fold {fold} is outside 1..{NUM_FOLDS}")
        if name in seen:
            raise DataError(f"{csv_path} lists {name!r} twice (lines {seen[name]} and {line}): remove the duplicate row")
        seen[name] = line
        if names.setdefault(class_id, label) != label:
            raise DataError(f"{csv_path} line {line}: classID {class_id} is named both {names[class_id]!r} and "
                            f"{label!r}: each classID needs one class name")
        path = root / "audio" / f"fold{fold}" / name
        if not os.path.lexists(path):
            missing.append(f"fold{fold}/{name}")
        paths.append(path)
        ids.append(os.path.splitext(name)[0])
        labels.append(label)
        groups.append((raw.get("fsID") or "").strip() or ids[-1])
        folds.append(fold)
    if missing:
        raise DataError(f"{len(missing)} of {len(rows)} clips listed in {csv_path} are missing under {root / 'audio'}: "
                        f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}; restore them or use a "
                        f"complete UrbanSound8K copy")
    order = [name for _, name in sorted(names.items())]
    if len(set(order)) != len(order):
        raise DataError(f"{csv_path}: one class name has several classIDs: each class needs one classID")
    return ClipList(root=root, paths=paths, clip_ids=ids, labels=labels, groups=groups, where=str(csv_path),
                    folds=folds, class_order=order)


def load_urbansound8k(dataset: Any, sample_rate: int, progress: bool = True) -> ClipSet:
    if protocol_of(dataset) != "cv":
        raise DataError("dataset.protocol=holdout: UrbanSound8K has no train/test split, only its 10 official "
                        "folds; use dataset.protocol=cv")
    if str(_opt(dataset, "label", "target")) != "target":
        raise DataError("dataset.label is only target for UrbanSound8K (its 10 classes)")
    root = resolve_root(dataset, progress=progress)
    clips = read_clips(root)
    return finish_clipset(dataset, clips, sample_rate, kind="urbansound8k", num_folds=NUM_FOLDS, progress=progress,
                          description="Decoding UrbanSound8K")


def _int(value: Any, column: str, csv_path: Path, line: int) -> int:
    text = (value or "").strip()
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise DataError(f"{csv_path} line {line}: {column} {text!r} is not an integer")
    return int(number)
