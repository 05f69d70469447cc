"""Datasets as in-memory clip sets.

``load_clipset(cfg.dataset, sample_rate)`` returns a :class:`ClipSet`: every
clip decoded to a fixed-length mono float32 waveform, with its class target,
cross-validation fold and source-recording group. ``dataset.kind`` selects the
loader: ``esc50`` (the ESC-50 layout), ``synthetic`` (generated tones) or
``folder`` (your own audio), ``urbansound8k`` or ``fsdkaggle2018`` (their
official release layouts). ``esc_sweep.data.clipset`` holds the ClipSet and
the tail every loader ends in.
"""

from __future__ import annotations

import importlib
from typing import Any

from esc_sweep.data.clipset import ClipList, ClipSet, option  # the ClipSet and the tail every loader ends in
from esc_sweep.errors import DataError

# dataset.kind -> (module, loader function); each module ends in esc_sweep.data.clipset.finish_clipset.
LOADERS = {
    "esc50": ("esc_sweep.data.esc50", "load_esc50"),
    "synthetic": ("esc_sweep.data.synthetic", "load_synthetic"),
    "folder": ("esc_sweep.data.folder", "load_folder"),
    "urbansound8k": ("esc_sweep.data.urbansound8k", "load_urbansound8k"),
    "fsdkaggle2018": ("esc_sweep.data.fsdkaggle2018", "load_fsdkaggle2018"),
}


def load_clipset(dataset: Any, sample_rate: int, progress: bool = True) -> ClipSet:
    """Load the dataset described by a ``DatasetConfig`` (or DictConfig) at ``sample_rate``."""
    kind = str(option(dataset, "kind", "esc50"))
    sample_rate = int(sample_rate)
    if sample_rate <= 0:
        raise DataError(f"sample rate must be > 0, got {sample_rate}: set features.sample_rate")
    if kind not in LOADERS:
        raise DataError(f"dataset.kind={kind!r} is unknown: use {', '.join(LOADERS)}")
    module_name, function = LOADERS[kind]
    # Imported on use: each loader module imports this package (a cycle at import time); they also cost ~0.3-0.5 s.
    loader = getattr(importlib.import_module(module_name), function)
    if kind == "synthetic":
        return loader(dataset, sample_rate)
    return loader(dataset, sample_rate, progress=progress)


__all__ = ["ClipList", "ClipSet", "load_clipset", "LOADERS"]
