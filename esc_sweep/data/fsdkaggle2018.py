"""FSDKaggle2018 in its official Zenodo layout (``dataset.kind: fsdkaggle2018``).

``dataset.root`` holds the three extracted archives of Zenodo record 2552860::

    FSDKaggle2018.audio_train/<fname>   9473 clips, 0.3 to 30 s
    FSDKaggle2018.audio_test/<fname>    1600 scored test clips (of 9400 files)
    FSDKaggle2018.meta/train_post_competition.csv                 fname,label,manually_verified,freesound_id,license
    FSDKaggle2018.meta/test_post_competition_scoring_clips.csv    fname,label,usage,freesound_id,license

41 classes (sorted by name: target ``t`` is the ``t``-th name). The protocol is
the official one (``dataset.protocol=holdout``): train on the train set, score
the 1600 test clips once; with ``trainer.validation=inner`` decisions (early
stopping, a sweep's objective) are made on a split of the train set, grouped by
Freesound recording (``freesound_id``).

Noisy labels: about 60 % of the training labels were not verified by a person
(``manually_verified=0``). ``dataset.manually_verified_only=true`` trains on the
verified ones only; ``dataset.unverified_weight`` (default 1) scales the loss of
each unverified clip instead. The test labels are all verified.

No download: fetch the three zips from https://zenodo.org/record/2552860 and
extract them into one folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from esc_sweep.data.clipset import ClipList, ClipSet, finish_clipset, protocol_of, resolve_path
from esc_sweep.data.clipset import option as _opt
from esc_sweep.data.csvfile import read_csv_rows
from esc_sweep.errors import DataError

TRAIN_AUDIO = "FSDKaggle2018.audio_train"
TEST_AUDIO = "FSDKaggle2018.audio_test"
META = "FSDKaggle2018.meta"
TRAIN_CSV = Path(META) / "train_post_competition.csv"
TEST_CSV = Path(META) / "test_post_competition_scoring_clips.csv"
TRAIN_COLUMNS = ("fname", "label", "manually_verified", "freesound_id", "license")
TEST_COLUMNS = ("fname", "label", "usage", "freesound_id", "license")
ENV = "FSDKAGGLE2018_ROOT"


def resolve_root(dataset: Any) -> Path:
    root, source = _opt(dataset, "root", None), "dataset.root"
    if not root:
        root, source = os.environ.get(ENV) or None, ENV
    if not root:
        raise DataError(f"FSDKaggle2018 not found: set dataset.root (or {ENV}) to the folder holding {TRAIN_AUDIO}/, "
                        f"{TEST_AUDIO}/ and {META}/ (the three zips of https://zenodo.org/record/2552860, extracted)")
    path = resolve_path(root)
    if not path.is_dir():
        raise DataError(f"FSDKaggle2018 root {path} (from {source}) does not exist: fix {source}")
    lacking = [p for p in (TRAIN_CSV, TEST_CSV, Path(TRAIN_AUDIO), Path(TEST_AUDIO)) if not (path / p).exists()]
    if lacking:
        raise DataError(f"FSDKaggle2018 root {path} (from {source}) has no {', '.join(p.as_posix() for p in lacking)}: "
                        f"point {source} at the folder holding the extracted {TRAIN_AUDIO}/, {TEST_AUDIO}/ and {META}/")
    return path


def read_clips(root: Path, verified_only: bool, unverified_weight: float) -> ClipList:
    paths, ids, labels, groups, splits, weights, missing = [], [], [], [], [], [], []
    keep: list[int] = []
    seen: dict[str, str] = {}
    for split, csv_name, columns, folder in (("train", TRAIN_CSV, TRAIN_COLUMNS, TRAIN_AUDIO),
                                             ("test", TEST_CSV, TEST_COLUMNS, TEST_AUDIO)):
        csv_path = root / csv_name
        fix = f"replace it with the official {csv_name.as_posix()}"
        _, rows = read_csv_rows(csv_path, columns, ",".join(columns), utf8_fix=fix, invalid_fix=fix, empty_fix=fix)
        for line, raw in enumerate(rows, start=2):
            fname = (raw.get("fname") or "").strip()
            label = (raw.get("label") or "").strip()
            if not fname or not label:
                raise DataError(f"{csv_path} line {line}: fname and label must not be empty")
            clip_id = f"{split}/{os.path.splitext(fname)[0]}"
            if clip_id in seen:
                raise DataError(f"{csv_path} line {line}: {fname!r} is listed twice in the {split} set")
            seen[clip_id] = split
            verified = True
            if split == "train":
                text = (raw.get("manually_verified") or "").strip()
                if text not in ("0", "1"):
                    raise DataError(f"{csv_path} line {line}: manually_verified {text!r} is neither 0 nor 1")
                verified = text == "1"
            path = root / folder / fname
            if not os.path.lexists(path):
                missing.append(f"{folder}/{fname}")
            if verified or not verified_only:
                keep.append(len(paths))
            paths.append(path)
            ids.append(clip_id)
            labels.append(label)
            groups.append(f"freesound:{(raw.get('freesound_id') or '').strip() or clip_id}")
            splits.append(split)
            weights.append(1.0 if verified else float(unverified_weight))
    if missing:
        raise DataError(f"{len(missing)} clips listed in {root / META} are missing under {root}: "
                        f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}; restore them or use a "
                        f"complete FSDKaggle2018 copy")
    weighted = any(w != 1.0 for w in weights)
    return ClipList(root=root, paths=paths, clip_ids=ids, labels=labels, groups=groups, where=str(root / META),
                    splits=splits, weights=weights if weighted else None, keep=keep,
                    extra={"verified_only": True} if verified_only else {})


def load_fsdkaggle2018(dataset: Any, sample_rate: int, progress: bool = True) -> ClipSet:
    if protocol_of(dataset) != "holdout":
        raise DataError("dataset.protocol=cv: FSDKaggle2018 has an official train/test split and no folds; "
                        "use dataset.protocol=holdout")
    if str(_opt(dataset, "label", "target")) != "target":
        raise DataError("dataset.label is only target for FSDKaggle2018 (its 41 classes)")
    root = resolve_root(dataset)
    weight = float(_opt(dataset, "unverified_weight", 1.0))
    clips = read_clips(root, bool(_opt(dataset, "manually_verified_only", False)), weight)
    return finish_clipset(dataset, clips, sample_rate, kind="fsdkaggle2018", num_folds=1, protocol="holdout",
                          progress=progress, description="Decoding FSDKaggle2018")
