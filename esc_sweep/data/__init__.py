"""Datasets as in-memory clip sets.

``load_clipset(cfg.dataset, sample_rate)`` returns a :class:`ClipSet`: every
clip decoded to a fixed-length mono float32 waveform, with its class target,
cross-validation fold and source-recording group. ``dataset.kind`` selects the
loader: ``esc50`` (the ESC-50 layout), ``synthetic`` (generated tones) or
``folder`` (your own audio).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from esc_sweep.errors import DataError


@dataclass
class ClipSet:
    waveforms: torch.Tensor  # float32 [N, num_samples] mono at sample_rate, on CPU
    targets: torch.Tensor  # int64 [N], values 0..C-1 (contiguous after subsetting)
    folds: torch.Tensor  # int64 [N], values 1..num_folds
    class_names: list[str]  # len C; class_names[t] is the name of target t
    clip_ids: list[str]  # file stems, len N
    groups: list[str]  # source-recording id per clip (ESC-50 src_file); len N
    sample_rate: int
    num_folds: int
    fingerprint: str  # short hex hash of (clip ids, file contents, sample rate, clip length, label mode, classes, folds)

    def __post_init__(self) -> None:
        n = self.waveforms.shape[0]
        if not (len(self.targets) == len(self.folds) == len(self.clip_ids) == len(self.groups) == n):
            raise ValueError(
                f"ClipSet fields differ in length: waveforms {n}, targets {len(self.targets)}, "
                f"folds {len(self.folds)}, clip_ids {len(self.clip_ids)}, groups {len(self.groups)}"
            )

    def __len__(self) -> int:
        return int(self.waveforms.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_samples(self) -> int:
        return int(self.waveforms.shape[-1])

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
        )


def load_clipset(dataset: Any, sample_rate: int, progress: bool = True) -> ClipSet:
    """Load the dataset described by a ``DatasetConfig`` (or DictConfig) at ``sample_rate``."""
    kind = str(_opt(dataset, "kind", "esc50"))
    sample_rate = int(sample_rate)
    if sample_rate <= 0:
        raise DataError(f"sample rate must be > 0, got {sample_rate}: set features.sample_rate")
    if kind == "esc50":
        # deferred: esc_sweep.data.esc50 imports this module (cycle); it also costs ~0.5 s
        from esc_sweep.data.esc50 import load_esc50

        return load_esc50(dataset, sample_rate, progress=progress)
    if kind == "synthetic":
        # deferred: esc_sweep.data.synthetic imports this module (cycle); it also costs ~0.3 s
        from esc_sweep.data.synthetic import load_synthetic

        return load_synthetic(dataset, sample_rate)
    if kind == "folder":
        # deferred: esc_sweep.data.folder imports this module (cycle); it also costs ~0.3 s
        from esc_sweep.data.folder import load_folder

        return load_folder(dataset, sample_rate, progress=progress)
    raise DataError(f"dataset.kind={kind!r} is unknown: use esc50, synthetic or folder")


# --------------------------------------------------------------------------
# Helpers shared by the loaders


def _opt(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.key`` for dataclasses, DictConfigs and dicts, ``default`` when absent."""
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    try:
        value = getattr(cfg, key)
    except Exception:  # omegaconf raises its own errors for missing keys
        return default
    return default if value is None and default is not None else value


def _requested_classes(cfg: Any) -> Optional[list[str]]:
    """The class names of ``dataset.classes``; None (absent or null) means all classes."""
    classes = _opt(cfg, "classes", None)
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = [classes]
    names = [str(c) for c in classes]
    if not names:
        # An empty list used to mean "all": a typo'd override then trained on everything.
        raise DataError("dataset.classes=[] selects no class: list at least 2 class names, or set dataset.classes=null for all")
    return list(dict.fromkeys(names))  # drop repeats, keep order


def _require_classes(class_names: Sequence[str], requested: Optional[Sequence[str]], where: str, fix: str = "") -> None:
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


def _check_class_names(requested: Sequence[str], valid: Sequence[str], where: str) -> None:
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


def _fingerprint(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _remap_targets(raw_targets: Sequence[int], names_by_raw: dict[int, str]) -> tuple[torch.Tensor, list[str]]:
    """Map raw target ids to 0..C-1 in order of raw id; returns targets and class names."""
    present = sorted(set(int(t) for t in raw_targets))
    new_id = {raw: i for i, raw in enumerate(present)}
    targets = torch.tensor([new_id[int(t)] for t in raw_targets], dtype=torch.long)
    return targets, [names_by_raw[raw] for raw in present]


__all__ = ["ClipSet", "load_clipset"]
