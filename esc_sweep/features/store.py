"""Device-resident spectrograms: a batch is an index tensor into them."""

from __future__ import annotations

from typing import Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from esc_sweep.console import phase
from esc_sweep.data import ClipSet
from esc_sweep.features.cache import cache_key, cached_features
from esc_sweep.features.frontends import WAVEFORM_KINDS
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
            return _compute_with_progress(self.extractor, clips.waveforms, device,
                                          bool(OmegaConf.select(cfg, "trainer.progress", default=True)))

        if not (cfg.features.cache and device.type == "cpu"):  # on a GPU computing them takes milliseconds
            return compute()
        if cfg.features.kind in WAVEFORM_KINDS:  # the waveforms themselves: already cached as such (data/)
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


# Clips per chunk: compute_features' batch, so the values are the same bit for bit.
_CHUNK = 256


def _compute_with_progress(extractor: torch.nn.Module, waveforms: torch.Tensor, device: torch.device,
                           progress: bool) -> torch.Tensor:
    """``compute_features`` chunk by chunk, with progress: on a CPU a cold start spends 5-80 s here."""
    if device.type != "cpu":  # milliseconds on a GPU: nothing to show
        return compute_features(extractor, waveforms, device, batch_size=_CHUNK)
    chunks = []
    with phase("Computing spectrograms", len(waveforms), enabled=progress, unit="clips") as bar:
        for chunk in waveforms.split(_CHUNK):
            chunks.append(compute_features(extractor, chunk, device, batch_size=_CHUNK))
            bar.advance(len(chunk))
    return torch.cat(chunks)


class WindowedSpectrograms:
    """Variable-length clips (``dataset.variable_length``): features computed per batch from the int16 clips.

    ``source[index]`` gives a random ``dataset.clip_seconds`` crop of each clip (a new one each time: the
    training batches and the normalisation statistics); ``windows`` gives ``predict``'s windows over the
    whole clips (evaluation). Nothing is precomputed: the clips differ in length, and a crop's spectrogram
    costs less than the model's forward pass on it.
    """

    precomputed = False

    def __init__(self, cfg: DictConfig, clips: ClipSet, device: torch.device):
        self.extractor = build_features(cfg.features).to(device)
        self.audio = clips.ragged.to(device)
        self.window = int(clips.window_samples)
        self.repeat_short = cfg.dataset.short_clips == "repeat"
        self.num_bins = self[torch.zeros(1, dtype=torch.long, device=device)].shape[2]

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.extractor(self.audio.random_crops(index, self.window, repeat_short=self.repeat_short))

    def batches(self, index: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        for chunk in index.split(batch_size):
            yield self[chunk]

    def windows(self, index: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(spectrograms, owner: position in ``index``, weight: share of real audio) per batch of windows."""
        owner, starts, weight = self.audio.evaluation_windows(index, self.window, self.repeat_short)
        for chunk in torch.arange(len(owner), device=owner.device).split(batch_size):
            with torch.no_grad():
                x = self.extractor(self.audio.windows(index[owner[chunk]], starts[chunk], self.window,
                                                      self.repeat_short))
            yield x, owner[chunk], weight[chunk]


def feature_source(cfg: DictConfig, clips: ClipSet, device: torch.device):
    """Spectrograms for fixed-length clips, WindowedSpectrograms for variable-length ones."""
    if clips.ragged is not None:
        return WindowedSpectrograms(cfg, clips, device)
    return Spectrograms(cfg, clips, device)
