"""Device-resident spectrograms: a batch is an index tensor into them."""

from __future__ import annotations

from typing import Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from esc_sweep.data import ClipSet
from esc_sweep.features.cache import cache_key, cached_features
from esc_sweep.features.transforms import build_features, compute_features
from esc_sweep.paths import feature_cache_dir


class Spectrograms:
    """Device-resident features for every clip; ``source[index]`` gives a batch.

    With ``features.precompute`` the spectrograms are computed once; otherwise
    they are recomputed from the device-resident waveforms for each batch.
    """

    def __init__(self, cfg: DictConfig, clips: ClipSet, device: torch.device):
        self.extractor = build_features(cfg.features).to(device)
        self.precomputed = bool(cfg.features.precompute)
        if self.precomputed:
            self.data = self._precompute(cfg, clips, device)
        else:
            self.data = clips.waveforms.to(device)
        self.num_bins = self[torch.zeros(1, dtype=torch.long, device=device)].shape[2]

    def _precompute(self, cfg: DictConfig, clips: ClipSet, device: torch.device) -> torch.Tensor:
        def compute() -> torch.Tensor:
            return compute_features(self.extractor, clips.waveforms, device)

        if not (cfg.features.cache and device.type == "cpu"):  # on a GPU computing them takes milliseconds
            return compute()
        key = cache_key(clips.fingerprint, clips.waveforms, OmegaConf.to_container(cfg.features, resolve=True))
        return cached_features(feature_cache_dir(cfg.dataset.cache_dir), key, compute)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        if self.precomputed:
            return self.data[index]
        with torch.no_grad():
            return self.extractor(self.data[index])

    def batches(self, index: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        for chunk in index.split(batch_size):
            yield self[chunk]
