"""Feature extraction: waveforms [B, T] -> log-spectrograms [B, 1, F, frames].

Small nn.Modules in the spirit of torchaudio.transforms, so they run batched on
whatever device the waveforms live on. Normalisation is not done here: it
belongs to the model (see ``esc_sweep.models.Standardize``) so a saved model
carries the statistics it was trained with.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from esc_sweep.config import FeaturesConfig


class LogMel(nn.Module):
    def __init__(self, cfg: FeaturesConfig):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            n_mels=cfg.n_mels,
            power=2.0,
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB("power", top_db=cfg.top_db)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        # [B, 1, F, T]: AmplitudeToDB applies top_db per example only with a channel dim.
        return self.to_db(self.mel(waveforms).unsqueeze(1))


class MFCC(nn.Module):
    """DCT of the log-mel spectrogram (top_db applied per clip, unlike torchaudio.transforms.MFCC)."""

    def __init__(self, cfg: FeaturesConfig):
        super().__init__()
        self.log_mel = LogMel(cfg)
        self.register_buffer("dct", torchaudio.functional.create_dct(cfg.n_mfcc, cfg.n_mels, norm="ortho"))

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        log_mel = self.log_mel(waveforms)  # [B, 1, n_mels, T]
        return torch.einsum("bcft,fk->bckt", log_mel, self.dct)


class LogSpectrogram(nn.Module):
    def __init__(self, cfg: FeaturesConfig):
        super().__init__()
        self.spec = torchaudio.transforms.Spectrogram(
            n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length, power=2.0
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB("power", top_db=cfg.top_db)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.to_db(self.spec(waveforms).unsqueeze(1))


_FEATURES = {"mel": LogMel, "mfcc": MFCC, "stft": LogSpectrogram}


def build_features(cfg: FeaturesConfig) -> nn.Module:
    return _FEATURES[cfg.kind](cfg)


def feature_shape(cfg: FeaturesConfig, num_samples: int) -> tuple[int, int]:
    """(frequency bins, frames) that ``build_features(cfg)`` produces for a clip."""
    bins = {"mel": cfg.n_mels, "mfcc": cfg.n_mfcc, "stft": cfg.n_fft // 2 + 1}[cfg.kind]
    return bins, num_samples // cfg.hop_length + 1


@torch.no_grad()
def compute_features(
    extractor: nn.Module, waveforms: torch.Tensor, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Features for a whole dataset, computed in batches on ``device`` and kept there."""
    extractor = extractor.to(device)
    chunks = [extractor(chunk.to(device, non_blocking=True)) for chunk in waveforms.split(batch_size)]
    return torch.cat(chunks)
