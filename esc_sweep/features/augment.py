"""Batched augmentation of log-spectrograms on the training device.

Every transform draws its randomness for the whole batch at once (no per-clip
Python loop). Inputs are decibel spectrograms [B, 1, F, T]; normalisation
happens later, inside the model, so gain shifts survive it.
"""

from __future__ import annotations

import torch
from torch import nn

from esc_sweep.config import AugmentationConfig
from esc_sweep.features.bc import BCMix


class RandomGain(nn.Module):
    """Add a per-clip gain drawn uniformly from [-max_db, +max_db] decibels."""

    def __init__(self, max_db: float):
        super().__init__()
        self.max_db = max_db

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) * 2 - 1) * self.max_db
        return x + gain


class RandomWaveformGain(nn.Module):
    """Scale each waveform by a gain drawn uniformly from [-max_db, +max_db] decibels."""

    def __init__(self, max_db: float):
        super().__init__()
        self.max_db = max_db

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) * 2 - 1) * self.max_db
        return x * torch.pow(10.0, gain / 20)


class RandomCrop(nn.Module):
    """Take a random window of ``frames`` frames from each clip (all clips at once).

    Training on crops is cheaper per step and shows the model each sound at
    many positions; evaluation still sees the whole clip (global pooling).
    """

    def __init__(self, frames: int):
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.shape[-1]
        if self.frames >= total:
            return x
        start = torch.randint(0, total - self.frames + 1, (x.shape[0], 1, 1, 1), device=x.device)
        index = start + torch.arange(self.frames, device=x.device)
        return torch.gather(x, -1, index.expand(*x.shape[:-1], self.frames))


class RandomTimeShift(nn.Module):
    """Circularly shift each clip in time by up to ``max_fraction`` of its length."""

    def __init__(self, max_fraction: float):
        super().__init__()
        self.max_fraction = max_fraction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        max_shift = int(frames * self.max_fraction)
        shift = torch.randint(-max_shift, max_shift + 1, (x.shape[0], 1, 1, 1), device=x.device)
        index = (torch.arange(frames, device=x.device) - shift) % frames
        return torch.gather(x, -1, index.expand_as(x))


class RandomBandLimit(nn.Module):
    """Imitate a recording made at a lower sample rate (or through a narrow-band codec).

    With probability ``prob`` a clip loses everything above a random cutoff in the top
    ``max_fraction`` of its frequency axis, the way an 8 kHz recording resampled to 16 kHz
    has nothing above 4 kHz. Two details make it look like the real thing (measured on
    ESC-10 clips sent through 8 kHz, after per-clip standardisation the augmented
    spectrogram is about 2.5 times closer to the real one than a hard cut to the clip's
    minimum):

    * the removed band sits ``floor_db`` below the clip's peak, which is what silence
      becomes after the decibel clamp (``features.top_db``), not at the clip's own minimum
      (a noisy clip's minimum is often 50 dB above real silence);
    * the ``TAPER_FRACTION`` of the axis below the cutoff fades out linearly in decibels,
      like the resampler's anti-alias filter seen through overlapping mel bands.
    """

    TAPER_FRACTION = 0.1  # about 6 of 64 mel bands: the measured transition of an 8 kHz round trip

    def __init__(self, prob: float, max_fraction: float, floor_db: float = 80.0):
        super().__init__()
        self.prob, self.max_fraction, self.floor_db = prob, max_fraction, floor_db

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, bins = x.shape[0], x.shape[-2]
        removed = torch.rand(batch, device=x.device) * self.max_fraction * bins
        apply = torch.rand(batch, device=x.device) < self.prob
        return torch.where(apply.view(batch, 1, 1, 1), self.limit(x, removed), x)

    def limit(self, x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        """Every clip of ``x`` [B, 1, F, T] with its top ``removed`` [B] bins (fractional) silenced."""
        batch, bins = x.shape[0], x.shape[-2]
        cutoff = (bins - removed).view(batch, 1, 1, 1)
        taper = max(1.0, self.TAPER_FRACTION * bins)
        position = torch.arange(bins, device=x.device, dtype=x.dtype).view(1, 1, bins, 1)
        # 0 dB at and below cutoff - taper, the full floor_db at and above the cutoff.
        attenuation = ((position - (cutoff - taper)) / taper).clamp(0, 1) * self.floor_db
        floor = x.amax(dim=(1, 2, 3), keepdim=True) - self.floor_db
        # Faded down to the floor, never raised to it (a cell already below the floor stays).
        return torch.maximum(x - attenuation, torch.minimum(x, floor))


class Masking(nn.Module):
    """SpecAugment-style masks along one axis (-2: frequency, -1: time).

    Each clip gets ``count`` masks of width uniform in [0, max_width]; masked
    cells take the clip's mean so the mask carries no energy of its own.
    """

    def __init__(self, axis: int, count: int, max_width: int):
        super().__init__()
        self.axis, self.count, self.max_width = axis, count, max_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[self.axis]
        batch = x.shape[0]
        width = torch.randint(0, min(self.max_width, size) + 1, (batch, self.count), device=x.device)
        start = (torch.rand(batch, self.count, device=x.device) * (size - width + 1)).long()
        positions = torch.arange(size, device=x.device).view(1, 1, size)
        inside = (positions >= start.unsqueeze(-1)) & (positions < (start + width).unsqueeze(-1))
        mask = inside.any(dim=1)  # [B, size]
        mask = mask.view(batch, 1, size, 1) if self.axis == -2 else mask.view(batch, 1, 1, size)
        fill = x.mean(dim=(1, 2, 3), keepdim=True)
        return torch.where(mask, fill, x)


class Mixup(nn.Module):
    """Mix each clip with a random partner; returns mixed inputs and soft targets."""

    # Below this alpha, Beta(alpha, alpha) is sampled in log space (see _sample_lambda).
    SMALL_ALPHA = 0.05

    def __init__(self, alpha: float, prob: float = 1.0):
        super().__init__()
        self.alpha, self.prob = alpha, prob

    def _sample_lambda(self, batch: int, device: torch.device) -> torch.Tensor:
        alpha = torch.tensor(self.alpha, device=device)
        if self.alpha >= self.SMALL_ALPHA:
            return torch.distributions.Beta(alpha, alpha).sample((batch,))
        # Beta = X / (X + Y) with X, Y ~ Gamma(alpha): for a tiny alpha both underflow to 0 and
        # torch returns 0.5, a 50/50 mix where "almost no mixing" is meant. In log space,
        # log Gamma(a) = log Gamma(a + 1) + log(U) / a (Marsaglia-Tsang), and lambda = sigmoid(log X - log Y).
        gamma = torch.distributions.Gamma(alpha + 1, torch.ones((), device=device))
        log_x, log_y = (gamma.sample((batch,)).log() + torch.rand(batch, device=device).log() / alpha
                        for _ in range(2))
        return torch.sigmoid(log_x - log_y)

    def forward(self, x: torch.Tensor, soft_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        lam = self._sample_lambda(batch, x.device)
        lam = torch.maximum(lam, 1 - lam)  # the clip keeps the larger share
        apply = torch.rand(batch, device=x.device) < self.prob
        lam = torch.where(apply, lam, torch.ones_like(lam))
        partner = torch.randperm(batch, device=x.device)
        x = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[partner]
        soft_targets = lam.view(-1, 1) * soft_targets + (1 - lam.view(-1, 1)) * soft_targets[partner]
        return x, soft_targets


class Augment(nn.Module):
    """The configured augmentation chain; identity for ``augmentation=none``.

    ``frames_per_second`` converts ``crop_seconds`` to steps of the last axis (frames, or samples for
    waveforms). ``domain``: ``db`` for decibel spectrograms, ``waveform`` for waveforms [B, 1, 1, T]
    (``features.kind=leaf|waveform``): the gain multiplies, crop and shift count samples, and the
    spectrogram-only steps (band limit, masks) are refused by the config check. ``sample_rate``: the
    waveforms' rate, for BC learning's level-aware mix.
    """

    def __init__(self, cfg: AugmentationConfig, frames_per_second: float | None = None, domain: str = "db",
                 sample_rate: int | None = None):
        super().__init__()
        waveform = domain == "waveform"
        steps: list[nn.Module] = []
        if cfg.crop_seconds > 0:
            if frames_per_second is None:
                raise ValueError("augmentation.crop_seconds needs the features' frames_per_second")
            steps.append(RandomCrop(max(1, round(cfg.crop_seconds * frames_per_second))))
        if cfg.gain_db > 0:
            steps.append(RandomWaveformGain(cfg.gain_db) if waveform else RandomGain(cfg.gain_db))
        # Before mixup, so a partner may refill part of a removed band. Limiting the mixture
        # instead (after mixup, like a recording channel) measured no different on ESC-50
        # fold 1 (benchmarks/README.md, "The 8 kHz gap on 50 classes").
        if cfg.band_limit_prob > 0 and cfg.band_limit_max_fraction > 0 and not waveform:
            steps.append(RandomBandLimit(cfg.band_limit_prob, cfg.band_limit_max_fraction, cfg.band_limit_floor_db))
        if cfg.time_shift > 0:
            steps.append(RandomTimeShift(cfg.time_shift))
        if cfg.freq_masks > 0 and cfg.freq_mask_width > 0 and not waveform:
            steps.append(Masking(-2, cfg.freq_masks, cfg.freq_mask_width))
        if cfg.time_masks > 0 and cfg.time_mask_width > 0 and not waveform:
            steps.append(Masking(-1, cfg.time_masks, cfg.time_mask_width))
        self.steps = nn.Sequential(*steps)
        self.mixup = Mixup(cfg.mixup_alpha, cfg.mixup_prob) if cfg.mixup_alpha > 0 else None
        if getattr(cfg, "bc_learning", False):
            if waveform and sample_rate is None:
                raise ValueError("augmentation.bc_learning on waveforms needs their sample_rate")
            # Waveforms: level-aware (the paper's sounds); spectrograms: the simple mix.
            self.mixup = BCMix(sample_rate if waveform else None)

    def forward(self, x: torch.Tensor, soft_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.steps(x)
        if self.mixup is not None:
            x, soft_targets = self.mixup(x, soft_targets)
        return x, soft_targets
