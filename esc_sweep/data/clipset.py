"""The ClipSet every loader returns, and the shared tail every loader ends in.

A loader (``esc50.py``, ``folder.py``, ``urbansound8k.py``, ``fsdkaggle2018.py``)
reads its own metadata into a :class:`ClipList` (files, labels, folds or the
train/test split, groups), then calls :func:`finish_clipset`, which selects the
classes, decodes (or reads from the cache) every clip, fingerprints the data and
builds the :class:`ClipSet`. Only what differs between layouts lives in the
loaders.

Two ways to hold the audio:

* fixed length (the default): every clip decoded to ``dataset.clip_seconds``,
  cut or zero-padded, in ``ClipSet.waveforms`` ``[N, num_samples]``;
* ``dataset.variable_length=true``: every clip whole, as int16 in one flat
  buffer (``ClipSet.ragged``, :mod:`esc_sweep.data.ragged`); training takes
  random ``clip_seconds`` crops, evaluation averages windows over the whole
  clip as ``predict`` does. ``ClipSet.waveforms`` is then ``[N, 0]``.

Two protocols (``dataset.protocol``):

* ``cv``: ``ClipSet.folds`` holds each clip's fold, 1..num_folds;
* ``holdout``: an official train/test split. Test clips are fold 1, training
  clips fold 0, and ``num_folds`` is 1, so "fold 1" of the cross-validation
  code is exactly "train on the train split, score the test split once".
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from esc_sweep.data import audio as audio_mod
from esc_sweep.data.cache import content_digests, default_cache_dir, load_waveforms
from esc_sweep.data.ragged import RaggedWaveforms, load_ragged
from esc_sweep.errors import DataError

PROTOCOLS = ("cv", "holdout")
# Holdout as folds: the test split is fold 1, the training split fold 0 (never a validation fold).
HOLDOUT_TEST_FOLD = 1
HOLDOUT_TRAIN_FOLD = 0


@dataclass
class ClipSet:
    waveforms: torch.Tensor  # float32 [N, num_samples] mono at sample_rate, on CPU ([N, 0] when ragged)
    targets: torch.Tensor  # int64 [N], values 0..C-1 (contiguous after subsetting)
    folds: torch.Tensor  # int64 [N], values 1..num_folds (holdout: 1 = test, 0 = train)
    class_names: list[str]  # len C; class_names[t] is the name of target t
    clip_ids: list[str]  # file stems, len N
    groups: list[str]  # source-recording id per clip (ESC-50 src_file); len N
    sample_rate: int
    num_folds: int
    fingerprint: str  # short hex hash of (clip ids, file contents, sample rate, clip length, label mode, classes, folds)
    protocol: str = "cv"  # cv | holdout (see the module docstring)
    # dataset.variable_length: whole clips, int16, in one flat buffer; None for fixed-length clips.
    ragged: Optional[RaggedWaveforms] = None
    window_samples: int = 0  # ragged: the crop / evaluation window length (dataset.clip_seconds)
    # Per-clip loss weight (FSDKaggle2018's unverified labels); None: every clip weighs 1.
    weights: Optional[torch.Tensor] = field(default=None)

    def __post_init__(self) -> None:
        n = self.waveforms.shape[0]
        if not (len(self.targets) == len(self.folds) == len(self.clip_ids) == len(self.groups) == n):
            raise ValueError(
                f"ClipSet fields differ in length: waveforms {n}, targets {len(self.targets)}, "
                f"folds {len(self.folds)}, clip_ids {len(self.clip_ids)}, groups {len(self.groups)}"
            )
        if self.ragged is not None and len(self.ragged) != n:
            raise ValueError(f"ClipSet has {n} clips but {len(self.ragged)} ragged waveforms")

    def __len__(self) -> int:
        return int(self.waveforms.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_samples(self) -> int:
        """Samples per clip (fixed length), or per window (variable length)."""
        return self.window_samples if self.ragged is not None else int(self.waveforms.shape[-1])

    def with_first_windows(self) -> "ClipSet":
        """Variable-length clips as fixed-length ones: each clip's first window (zero-padded), float32.
        For a few clips (figures): the whole set this way would cost window x N float32s."""
        if self.ragged is None:
            return self
        rows = torch.arange(len(self), device=self.ragged.lengths.device)
        waveforms = self.ragged.windows(rows, torch.zeros_like(rows), self.window_samples).cpu()
        return replace(self, waveforms=waveforms, ragged=None)

    def subset(self, index: torch.Tensor) -> "ClipSet":
        """The selected rows (long indices or a bool mask); classes are unchanged."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise ValueError(f"bool mask has shape {tuple(index.shape)}, expected ({len(self)},)")
            index = index.nonzero().flatten()
        index = index.to(torch.long).flatten()
        rows = index.tolist()
        h = hashlib.sha256(self.fingerprint.encode())
        h.update(index.numpy().tobytes())
        return ClipSet(
            waveforms=self.waveforms[index],
            targets=self.targets[index],
            folds=self.folds[index],
            class_names=list(self.class_names),
            clip_ids=[self.clip_ids[i] for i in rows],
            groups=[self.groups[i] for i in rows],
            sample_rate=self.sample_rate,
            num_folds=self.num_folds,
            fingerprint=h.hexdigest()[:16],
            protocol=self.protocol,
            ragged=self.ragged.subset(index) if self.ragged is not None else None,
            window_samples=self.window_samples,
            weights=self.weights[index] if self.weights is not None else None,
        )


@dataclass
class ClipList:
    """What a loader read from its metadata, before any audio is decoded. One entry per file."""

    root: Path
    paths: list[Path]
    clip_ids: list[str]  # shown and logged: printable text, unique
    labels: list[str]  # class name per file
    groups: list[str]  # source-recording id per file (clips of one recording never straddle a split)
    where: str  # what to blame in errors: the metadata file or the root
    folds: Optional[list[int]] = None  # cv: 1..num_folds per file
    splits: Optional[list[str]] = None  # holdout: "train" or "test" per file
    weights: Optional[list[float]] = None  # per-file loss weight; None: all 1
    class_order: Optional[list[str]] = None  # target t = class_order[t]; default: sorted label names
    # The files the loader's own filters keep (ESC-10, manually verified only, ...); None: all.
    # Every file is still decoded (or cached), so the subsets of one root share one cache file.
    keep: Optional[list[int]] = None
    extra: dict[str, Any] = field(default_factory=dict)  # loader-specific values the fingerprint must see


# --------------------------------------------------------------------------
# Small helpers the loaders share


def option(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.key`` for dataclasses, DictConfigs and dicts, ``default`` when absent."""
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    try:
        value = getattr(cfg, key)
    except Exception:  # omegaconf raises its own errors for missing keys
        return default
    return default if value is None and default is not None else value


def requested_classes(cfg: Any) -> Optional[list[str]]:
    """The class names of ``dataset.classes``; None (absent or null) means all classes."""
    classes = option(cfg, "classes", None)
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = [classes]
    names = [str(c) for c in classes]
    if not names:
        # An empty list used to mean "all": a typo'd override then trained on everything.
        raise DataError("dataset.classes=[] selects no class: list at least 2 class names, or set dataset.classes=null for all")
    return list(dict.fromkeys(names))  # drop repeats, keep order


def require_classes(class_names: Sequence[str], requested: Optional[Sequence[str]], where: str, fix: str = "") -> None:
    """Refuse fewer than 2 classes: a one-class classifier scores 100% and learns nothing.

    Call after the selection and before decoding, so the error comes at once
    and blames ``dataset.classes`` when that is what left a single class.
    """
    if len(class_names) >= 2:
        return
    found = f"{len(class_names)} class ({', '.join(class_names) or 'none'})"
    if requested is not None:
        raise DataError(
            f"dataset.classes=[{','.join(requested)}] leaves {found} in {where}: a classifier needs at least 2; "
            f"list more classes or set dataset.classes=null for all"
        )
    raise DataError(f"{where} has {found}: a classifier needs at least 2 classes{fix}")


def check_class_names(requested: Sequence[str], valid: Sequence[str], where: str) -> None:
    valid_set = set(valid)
    unknown = [c for c in requested if c not in valid_set]
    if unknown:
        close = [m for c in unknown for m in difflib.get_close_matches(c, sorted(valid_set), n=1, cutoff=0.6)]
        # Close matches (typos) first, then the alphabetically first names.
        examples = ", ".join(list(dict.fromkeys(close + sorted(valid_set)))[:6])
        raise DataError(
            f"dataset.classes names unknown class(es) {', '.join(unknown)} in {where}: "
            f"valid names include {examples}{', ...' if len(valid_set) > 6 else ''}"
        )


def fingerprint_of(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def remap_targets(raw_targets: Sequence[int], names_by_raw: dict[int, str]) -> tuple[torch.Tensor, list[str]]:
    """Map raw target ids to 0..C-1 in order of raw id; returns targets and class names."""
    present = sorted(set(int(t) for t in raw_targets))
    new_id = {raw: i for i, raw in enumerate(present)}
    targets = torch.tensor([new_id[int(t)] for t in raw_targets], dtype=torch.long)
    return targets, [names_by_raw[raw] for raw in present]


def protocol_of(dataset: Any) -> str:
    protocol = str(option(dataset, "protocol", "cv"))
    if protocol not in PROTOCOLS:
        raise DataError(f"dataset.protocol={protocol!r} is unknown: use {' or '.join(PROTOCOLS)}")
    return protocol


def holdout_folds(splits: Sequence[str], where: str) -> list[int]:
    """The split column as folds: test -> 1, train -> 0; DataError for any other value or a missing side."""
    values = {"train": HOLDOUT_TRAIN_FOLD, "test": HOLDOUT_TEST_FOLD}
    bad = sorted({s for s in splits if s not in values})
    if bad:
        raise DataError(f"{where}: split value(s) {', '.join(map(repr, bad[:5]))} are neither train nor test: "
                        f"fix the split column")
    for side in values:
        if side not in splits:
            raise DataError(f"{where}: no clip has split={side}: dataset.protocol=holdout needs both train and test clips")
    return [values[s] for s in splits]


# --------------------------------------------------------------------------
# The shared tail


def finish_clipset(
    dataset: Any, clips: ClipList, sample_rate: int, *, kind: str, num_folds: int, protocol: str = "cv",
    label_mode: str = "target", prefix: Optional[str] = None, progress: bool = True,
    description: Optional[str] = None, select_classes: bool = True, class_fix: str = "",
    before_decode: Optional[Callable[[torch.Tensor, list[str], list[int]], None]] = None,
) -> ClipSet:
    """Select ``dataset.classes``, decode (or read from the cache) every clip, fingerprint, build the ClipSet.

    Every file of ``clips`` is decoded (or read from the one cache of the root), then the
    selected rows are kept, so all class subsets of one root share one cache file.
    ``before_decode(targets, class_names, folds)``: the loader's own checks of the selection,
    run before any audio is read so that its errors come at once. ``select_classes=False``: the
    loader applied ``dataset.classes`` itself (into ``clips.keep``).
    """
    names = list(clips.class_order) if clips.class_order is not None else sorted(set(clips.labels))
    index_of = {name: i for i, name in enumerate(names)}
    raw_targets = [index_of[label] for label in clips.labels]
    if protocol == "holdout":
        if clips.splits is None:
            raise DataError(f"{clips.where} has no train/test split: dataset.protocol=holdout needs a split column "
                            f"(set dataset.protocol=cv)")
        folds_all = holdout_folds(clips.splits, clips.where)
        num_folds = 1
    else:
        if clips.folds is None:
            raise DataError(f"{clips.where} has no folds: set dataset.protocol=holdout to use its train/test split")
        folds_all = list(clips.folds)

    keep = list(clips.keep) if clips.keep is not None else list(range(len(clips.paths)))
    requested = requested_classes(dataset)
    if requested is not None and select_classes:
        check_class_names(requested, names, clips.where)
        wanted = set(requested)
        keep = [i for i in keep if clips.labels[i] in wanted]
    targets, class_names = remap_targets([raw_targets[i] for i in keep], dict(enumerate(names)))
    require_classes(class_names, requested, clips.where, fix=class_fix)
    if protocol == "holdout":
        _require_both_sides(targets, [folds_all[i] for i in keep], class_names, clips.where)
    if before_decode is not None:
        before_decode(targets, class_names, [folds_all[i] for i in keep])

    cache_dir = option(dataset, "cache_dir", None)
    name = str(option(dataset, "name", kind))
    prefix = prefix or f"{kind}-{name}"
    digests = content_digests(clips.paths, clips.root, default_cache_dir(cache_dir))
    index = torch.tensor(keep, dtype=torch.long)
    window = audio_mod.num_samples_for(float(option(dataset, "clip_seconds", 5.0)), sample_rate)
    variable = bool(option(dataset, "variable_length", False))
    if variable:
        full = load_ragged(clips.paths, clips.clip_ids, sample_rate, cache_dir=cache_dir, root=clips.root,
                           prefix=prefix, description=description or f"Decoding {name}", progress=progress,
                           digests=digests)
        ragged = full.subset(index) if len(keep) != len(clips.paths) else full
        waveforms = torch.empty((len(keep), 0), dtype=torch.float32)
    else:
        full = load_waveforms(clips.paths, clips.clip_ids, sample_rate, window, cache_dir=cache_dir, root=clips.root,
                              prefix=prefix, description=description or f"Decoding {name}", progress=progress,
                              digests=digests)
        waveforms = full.index_select(0, index).to(torch.float32) if len(keep) != len(clips.paths) else full.to(torch.float32)
        ragged = None
    del full

    clip_ids = [clips.clip_ids[i] for i in keep]
    folds = torch.tensor([folds_all[i] for i in keep], dtype=torch.long)
    weights = torch.tensor([clips.weights[i] for i in keep], dtype=torch.float32) if clips.weights is not None else None
    # File contents, not just sizes: re-exported audio must not resume stale folds.
    fingerprint = fingerprint_of(
        kind=kind,
        clip_ids=clip_ids,
        content=[digests[i] for i in keep],
        sample_rate=sample_rate,
        num_samples=window,
        label=label_mode,
        classes=class_names,
        targets=targets.tolist(),
        folds=folds.tolist(),
        # Keys that change nothing for the datasets that existed before them stay out of the hash,
        # so those keep their fingerprints (and their resumable checkpoints).
        **({"protocol": protocol} if protocol != "cv" else {}),
        **({"variable_length": True} if variable else {}),
        **({"weights": weights.tolist()} if weights is not None else {}),
        **clips.extra,
    )
    return ClipSet(
        waveforms=waveforms,
        targets=targets,
        folds=folds,
        class_names=class_names,
        clip_ids=clip_ids,
        groups=[clips.groups[i] for i in keep],
        sample_rate=sample_rate,
        num_folds=num_folds,
        fingerprint=fingerprint,
        protocol=protocol,
        ragged=ragged,
        window_samples=window,
        weights=weights,
    )


def _require_both_sides(targets: torch.Tensor, folds: list[int], class_names: list[str], where: str) -> None:
    """Every class of a holdout split is trained on: a class only in the test split cannot be learnt."""
    train = torch.tensor(folds) == HOLDOUT_TRAIN_FOLD
    trained = set(targets[train].tolist())
    missing = [class_names[t] for t in sorted(set(targets.tolist())) if t not in trained]
    if missing:
        raise DataError(f"{where}: class(es) {', '.join(missing[:5])} have no clip in the train split: "
                        f"add training clips or leave them out (dataset.classes)")
    if int(train.sum()) == len(folds):
        raise DataError(f"{where}: no clip of the selected classes is in the test split: add test clips")


def resolve_path(value: Any) -> Path:
    """A user's path: ``~`` and ``$VARS`` expanded."""
    return Path(os.path.expandvars(os.path.expanduser(str(value))))


__all__ = [
    "ClipSet", "ClipList", "finish_clipset", "option", "requested_classes", "require_classes", "check_class_names",
    "fingerprint_of", "remap_targets", "protocol_of", "holdout_folds", "PROTOCOLS",
]
