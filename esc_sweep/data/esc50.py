"""The ESC-50 layout: ``meta/esc50.csv`` plus ``audio/<clip>.<ext>``.

Clips are matched to csv rows by file stem, so a copy whose files are FLAC
(or OGG, ...) while the csv says ``.wav`` works unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


from esc_sweep.data import audio as audio_mod
from esc_sweep.data.clipset import ClipList, ClipSet, check_class_names, finish_clipset, protocol_of, requested_classes
from esc_sweep.data.clipset import option as _opt
from esc_sweep.data.csvfile import read_csv_rows
from esc_sweep.data.download import ensure_esc50
from esc_sweep.errors import DataError
from esc_sweep.paths import download_dir


NUM_FOLDS = 5
REQUIRED_COLUMNS = ("filename", "fold", "target", "category", "src_file")
# The five major ESC-50 categories; fine target t belongs to CATEGORIES[t // 10].
CATEGORIES = (
    "animals",
    "natural_soundscapes",
    "human_non_speech",
    "interior_domestic",
    "exterior_urban",
)
NOT_FOUND = "ESC-50 not found: set dataset.root=... or ESC50_ROOT, or allow dataset.download=true"


@dataclass
class Esc50Row:
    stem: str
    fold: int
    target: int
    category: str
    src_file: str
    esc10: Optional[bool]
    take: str


def resolve_root(dataset: Any, progress: bool = True) -> Path:
    """The ESC-50 root: dataset.root, else $ESC50_ROOT, else a download (if allowed)."""
    root = _opt(dataset, "root", None)
    source = "dataset.root"
    if not root:
        root = os.environ.get("ESC50_ROOT") or None
        source = "ESC50_ROOT"
    if not root:
        if not bool(_opt(dataset, "download", False)):
            raise DataError(NOT_FOUND)
        return ensure_esc50(dataset, progress=progress)
    path = Path(os.path.expandvars(os.path.expanduser(str(root))))
    if not path.is_dir():
        raise DataError(f"ESC-50 root {path} (from {source}) does not exist: point {source} at the folder holding meta/esc50.csv")
    try:
        has_csv = (path / "meta" / "esc50.csv").is_file()
    except OSError as exc:  # e.g. a chmod 000 root: stat() of what is inside it fails
        raise DataError(
            f"cannot read ESC-50 root {path} (from {source}): {exc.strerror or exc}; fix its permissions"
        ) from None
    if not has_csv:
        raise DataError(
            f"ESC-50 root {path} (from {source}) has no meta/esc50.csv: point {source} at the folder "
            f"holding meta/ and audio/ (e.g. the extracted ESC-50-master)"
        )
    return path


def read_metadata(root: Path) -> list[Esc50Row]:
    """Parse and check ``root/meta/esc50.csv``."""
    csv_path = root / "meta" / "esc50.csv"
    replace = "replace it with the ESC-50 meta/esc50.csv"
    header, raw_rows = read_csv_rows(
        csv_path, REQUIRED_COLUMNS, f"{','.join(REQUIRED_COLUMNS)}[,esc10,take]",
        utf8_fix=replace, invalid_fix=replace, empty_fix=replace,
    )

    has_esc10 = "esc10" in header
    rows: list[Esc50Row] = []
    seen: dict[str, int] = {}
    bad_folds: list[str] = []
    for line, raw in enumerate(raw_rows, start=2):
        filename = (raw.get("filename") or "").strip()
        if not filename:
            raise DataError(f"{csv_path} line {line}: empty filename")
        stem = Path(filename.replace("\\", "/")).name
        stem = os.path.splitext(stem)[0]
        if stem in seen:
            raise DataError(
                f"{csv_path} lists clip {stem!r} twice (lines {seen[stem]} and {line}): remove the duplicate row"
            )
        seen[stem] = line
        fold = _int(raw.get("fold"), "fold", csv_path, line)
        target = _int(raw.get("target"), "target", csv_path, line)
        if target < 0:
            raise DataError(f"{csv_path} line {line}: target {target} is negative")
        if not 1 <= fold <= NUM_FOLDS:
            bad_folds.append(f"{stem} (fold {fold})")
        esc10 = _bool(raw.get("esc10"), csv_path, line) if has_esc10 else None
        rows.append(
            Esc50Row(
                stem=stem,
                fold=fold,
                target=target,
                category=(raw.get("category") or "").strip(),
                src_file=(raw.get("src_file") or "").strip(),
                esc10=esc10,
                take=(raw.get("take") or "").strip(),
            )
        )
    if bad_folds:
        raise DataError(
            f"{csv_path}: {len(bad_folds)} clip(s) have a fold outside 1..{NUM_FOLDS}: "
            f"{', '.join(bad_folds[:5])}{', ...' if len(bad_folds) > 5 else ''}"
        )
    names: dict[int, str] = {}
    for r in rows:
        if not r.category:
            raise DataError(f"{csv_path}: clip {r.stem} has an empty category")
        if names.setdefault(r.target, r.category) != r.category:
            raise DataError(
                f"{csv_path}: target {r.target} is named both {names[r.target]!r} and {r.category!r}: "
                f"each target needs one category name"
            )
    return rows


def find_audio_files(root: Path, rows: list[Esc50Row]) -> list[Path]:
    """The audio file of each row, found by stem in ``root/audio`` (any readable extension)."""
    audio_dir = root / "audio"
    if not audio_dir.is_dir():
        raise DataError(f"ESC-50 root {root} has no audio/ folder: expected {audio_dir}/<clip>.wav (or .flac, .ogg)")
    by_stem: dict[str, list[str]] = {}
    try:
        entries = os.listdir(audio_dir)
    except OSError as exc:
        raise DataError(f"cannot list {audio_dir}: {exc.strerror or exc}") from None
    for name in entries:
        if audio_mod.is_audio_file(name):
            by_stem.setdefault(os.path.splitext(name)[0], []).append(name)
    paths: list[Path] = []
    missing: list[str] = []
    for r in rows:
        names = by_stem.get(r.stem)
        if not names:
            missing.append(r.stem)
            continue
        # Several encodings of one clip: prefer lossless/canonical formats.
        names.sort(key=lambda n: (_EXT_PREFERENCE.get(os.path.splitext(n)[1].lower(), 9), n))
        paths.append(audio_dir / names[0])
    if missing:
        exts = "/".join(sorted(e.lstrip(".") for e in {".wav", ".flac", ".ogg"}))
        raise DataError(
            f"{len(missing)} of {len(rows)} clips listed in {root / 'meta' / 'esc50.csv'} have no audio file "
            f"({exts}, ...) in {audio_dir}: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}; "
            f"restore them or use a complete ESC-50 copy"
        )
    return paths


_EXT_PREFERENCE = {".wav": 0, ".flac": 1, ".aiff": 2, ".aif": 2, ".w64": 3, ".rf64": 3, ".ogg": 4}


def load_esc50(dataset: Any, sample_rate: int, progress: bool = True) -> ClipSet:
    root = resolve_root(dataset, progress=progress)
    try:
        return _load_root(root, dataset, sample_rate, progress)
    except DataError as err:
        copy = _downloaded_copy(root, dataset)
        if copy is None:
            raise
        # A copy esc_sweep downloaded and extracted that is damaged now: the way out is a fresh download.
        raise DataError(f"{err}; this ESC-50 copy was downloaded into {copy}: delete that folder and run "
                        f"again to download it afresh") from None


def _downloaded_copy(root: Path, dataset: Any) -> Optional[Path]:
    """The extracted download folder holding ``root`` when esc_sweep downloaded it, else None."""
    base = download_dir(_opt(dataset, "download_dir", None)).resolve()
    try:
        relative = Path(root).resolve().relative_to(base)
    except ValueError:
        return None
    return base / relative.parts[0] if relative.parts and relative.parts[0].startswith("esc50-") else None


def _load_root(root: Path, dataset: Any, sample_rate: int, progress: bool) -> ClipSet:
    rows = read_metadata(root)
    label = str(_opt(dataset, "label", "target"))
    if label not in ("target", "category"):
        raise DataError(f"dataset.label={label!r} is unknown: use target (50 classes) or category (5 categories)")
    if protocol_of(dataset) != "cv":
        raise DataError("dataset.protocol=holdout: ESC-50 has no train/test split, only its 5 folds; use dataset.protocol=cv")
    esc10 = bool(_opt(dataset, "esc10", False))
    requested = requested_classes(dataset)
    csv_path = root / "meta" / "esc50.csv"

    # Every clip of the root is decoded (or read from the cache), then rows are selected,
    # so all subsets of one root share one cache file.
    paths = find_audio_files(root, rows)

    keep = list(range(len(rows)))
    if esc10:
        if rows[0].esc10 is None:
            raise DataError(f"{csv_path} has no esc10 column: set dataset.esc10=false or use the official metadata")
        keep = [i for i in keep if rows[i].esc10]
        if not keep:
            raise DataError(f"{csv_path} marks no clip as esc10=True: set dataset.esc10=false")
    if requested is not None:
        check_class_names(requested, sorted({r.category for r in rows}), str(csv_path))
        wanted = set(requested)  # fine class names, also with dataset.label=category
        keep = [i for i in keep if rows[i].category in wanted]
        present = {rows[i].category for i in keep}
        absent = [c for c in requested if c not in present]
        if absent:
            raise DataError(
                f"dataset.classes {', '.join(absent)} are not in the ESC-10 subset of {csv_path}: "
                f"drop them or set dataset.esc10=false"
            )

    if label == "category":
        too_big = sorted({rows[i].target for i in keep if rows[i].target >= 10 * len(CATEGORIES)})
        if too_big:
            raise DataError(
                f"{csv_path}: target(s) {too_big[:5]} are outside 0..49, so dataset.label=category "
                f"cannot map them to the 5 ESC-50 categories; use dataset.label=target"
            )
        labels = [CATEGORIES[r.target // 10] if r.target < 10 * len(CATEGORIES) else r.category for r in rows]
        order = list(CATEGORIES)
    else:
        labels = [r.category for r in rows]
        order = [name for _, name in sorted({r.target: r.category for r in rows}.items())]
    clips = ClipList(
        root=root,
        paths=paths,
        clip_ids=[r.stem for r in rows],
        labels=labels,
        groups=[r.src_file or r.stem for r in rows],
        where=str(csv_path),
        folds=[r.fold for r in rows],
        class_order=order,
        keep=keep,
    )
    return finish_clipset(dataset, clips, sample_rate, kind="esc50", num_folds=NUM_FOLDS, label_mode=label,
                          prefix="esc50", description="Decoding ESC-50", progress=progress,
                          select_classes=False)


def _int(value: Any, column: str, csv_path: Path, line: int) -> int:
    text = (value or "").strip()
    try:
        return int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            f = float("nan")
        if f.is_integer():
            return int(f)
        raise DataError(f"{csv_path} line {line}: {column} {text!r} is not an integer") from None


def _bool(value: Any, csv_path: Path, line: int) -> bool:
    text = (value or "").strip().lower()
    if text in ("true", "1", "yes", "t", "y"):
        return True
    if text in ("false", "0", "no", "f", "n", ""):
        return False
    raise DataError(f"{csv_path} line {line}: esc10 {value!r} is not True/False")

