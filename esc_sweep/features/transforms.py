"""Feature extraction: waveforms [B, T] -> log-spectrograms [B, 1, F, frames] (kind: mel|mfcc|stft|fbank|efficientat),
or what the store keeps for the kinds whose front end is (partly) in the model (pcen, leaf, waveform: frontends.py).

Small nn.Modules in the spirit of torchaudio.transforms, so they run batched on
whatever device the waveforms live on. Normalisation is not done here: it
belongs to the model (see ``esc_sweep.models.Standardize``) so a saved model
carries the statistics it was trained with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
import torchaudio.compliance.kaldi
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
            # slaney: librosa's filters (Slaney scale, area-normalised), what PANNs were trained with
            mel_scale=getattr(cfg, "mel_scale", "htk"),
            norm="slaney" if getattr(cfg, "mel_scale", "htk") == "slaney" else None,
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


class KaldiFbank(nn.Module):
    """Kaldi-compatible log-mel filter bank, as ``ASTFeatureExtractor`` computes it: [B, 1, n_mels, frames].

    ``torchaudio.compliance.kaldi.fbank`` with Kaldi's defaults (DC removal, pre-emphasis 0.97, mel
    triangles in the mel domain, natural log of the power, no dither) and AST's Hann window. The window is
    ``win_length`` samples (``n_fft`` if unset; 400 = 25 ms at 16 kHz, Kaldi's default), zero-padded to the
    next power of two (Kaldi's ``round_to_power_of_two``, so ``features.n_fft`` must be that size); the
    shift is ``hop_length``. Frames are not centred (Kaldi's ``snip_edges``): a clip of T samples gives
    1 + (T - window) // hop frames. Values are natural-log energies, not decibels, and neither ``top_db``
    nor ``mel_scale`` applies.
    """

    def __init__(self, cfg: FeaturesConfig):
        super().__init__()
        window = cfg.win_length or cfg.n_fft
        self.options = dict(
            sample_frequency=float(cfg.sample_rate),
            frame_length=_kaldi_milliseconds(window, cfg.sample_rate),
            frame_shift=_kaldi_milliseconds(cfg.hop_length, cfg.sample_rate),
            num_mel_bins=cfg.n_mels,
            low_freq=float(cfg.f_min),
            high_freq=float(cfg.f_max or 0.0),  # Kaldi: 0 means the Nyquist frequency
            window_type="hanning",
            dither=0.0,  # ASTFeatureExtractor's call leaves the rest at kaldi.fbank's defaults, as here
            use_energy=False,
        )

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        # kaldi.fbank takes one waveform at a time, so this loops over the batch in Python. It runs once,
        # when the spectrograms are precomputed (features.precompute=true, the default), not in the training
        # loop; with features.precompute=false it would run every batch, slower than the batched kinds.
        clips = [
            torchaudio.compliance.kaldi.fbank(wave.unsqueeze(0).float(), **self.options).T
            for wave in waveforms
        ]
        return torch.stack(clips).unsqueeze(1)


def _kaldi_milliseconds(samples: int, sample_rate: int) -> float:
    """A length in samples as the milliseconds kaldi.fbank takes, which it turns back with int(sr * ms / 1000).

    Half a sample extra keeps that int() from rounding 1024 samples at 32 kHz down to 1023.
    """
    return (samples + 0.5) * 1000.0 / sample_rate


# EfficientAT's pre-emphasis, y[n] = x[n+1] - PRE_EMPHASIS * x[n].
PRE_EMPHASIS = 0.97


def kaldi_mel_filters(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Kaldi's mel triangles [n_mels, n_fft // 2 + 1], what EfficientAT takes from torchaudio's kaldi module.

    Unlike HTK filters (triangles in Hz), Kaldi's are triangles on the mel axis
    (mel = 1127 ln(1 + f / 700)), and the Nyquist bin gets no weight.
    """
    def mel(f: torch.Tensor) -> torch.Tensor:
        return 1127.0 * torch.log1p(f / 700.0)

    low, high = (mel(torch.tensor(float(f), dtype=torch.float64)) for f in (f_min, f_max))
    edges = low + (high - low) * torch.arange(n_mels + 2, dtype=torch.float64) / (n_mels + 1)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins = mel(torch.arange(n_fft // 2, dtype=torch.float64) * sample_rate / n_fft)[None, :]
    rising, falling = (bins - left) / (centre - left), (right - bins) / (right - centre)
    filters = torch.minimum(rising, falling).clamp_min(0.0)
    return F.pad(filters, (0, 1)).float()  # no weight on the Nyquist bin


class EfficientATMel(nn.Module):
    """``features.kind=efficientat``: waveforms [B, T] at 32 kHz -> what EfficientAT's weights saw, as
    decibels [B, 1, n_mels, frames].

    EfficientAT's ``AugmentMelSTFT`` in evaluation mode (no masking, fixed band edges), written
    from its description: pre-emphasis ``y[n] = x[n+1] - 0.97 x[n]`` (one sample shorter), a
    centred, reflect-padded STFT with a symmetric Hann window of ``win_length`` inside ``n_fft``,
    the power, Kaldi's mel triangles. Returned as ``10 log10(max(mel, 1e-10))`` like esc_sweep's
    other spectrograms; ``esc_sweep.models.mobilenet.MobileNetAudio.prepare`` turns that into ``(ln(mel + 1e-5) + 4.5) / 5``.
    A clip of T samples gives 1 + (T - 1) // hop_length frames (500 for 5 s at 32 kHz).
    """

    def __init__(self, sample_rate: int = 32000, n_fft: int = 1024, win_length: int = 800, hop_length: int = 320,
                 n_mels: int = 128, f_min: float = 0.0, f_max: float = 15000.0):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        # Symmetric (periodic=False), as EfficientAT's; torchaudio's transforms use the periodic one.
        self.register_buffer("window", torch.hann_window(win_length, periodic=False), persistent=False)
        self.register_buffer("filters", kaldi_mel_filters(n_mels, n_fft, sample_rate, f_min, f_max),
                             persistent=False)

    @classmethod
    def from_features(cls, cfg) -> "EfficientATMel":
        """From ``features.*`` keys (sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max)."""
        return cls(cfg.sample_rate, cfg.n_fft, cfg.win_length or cfg.n_fft, cfg.hop_length, cfg.n_mels,
                   cfg.f_min, cfg.f_max if cfg.f_max is not None else cfg.sample_rate / 2)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = waveforms.float()
        x = x[..., 1:] - PRE_EMPHASIS * x[..., :-1]
        spec = torch.stft(x, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=True, pad_mode="reflect", return_complex=True)
        power = torch.view_as_real(spec).pow(2).sum(-1)
        mel = self.filters @ power
        return 10.0 * torch.log10(mel.clamp_min(1e-10)).unsqueeze(1)


class WaveformInput(nn.Module):
    """``features.kind=leaf|waveform``: the store keeps the waveform itself, as [B, 1, 1, T].

    The shape is the spectrograms' [B, 1, F, T] with one "bin", so batches, crops (augmentation and
    test-time) and standardisation work along the last axis as for spectrograms; the rest of the
    front end, if any, is in the model (``esc_sweep.features.frontends``).
    """

    def __init__(self, cfg: FeaturesConfig | None = None):
        super().__init__()

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return waveforms.float().reshape(waveforms.shape[0], 1, 1, waveforms.shape[-1])


# pcen stores the decibel mel spectrogram: its model turns it back into energies (frontends.py).
_FEATURES = {"mel": LogMel, "mfcc": MFCC, "stft": LogSpectrogram, "fbank": KaldiFbank,
             "efficientat": EfficientATMel.from_features, "pcen": LogMel, "leaf": WaveformInput,
             "waveform": WaveformInput}


def build_features(cfg: FeaturesConfig) -> nn.Module:
    return _FEATURES[cfg.kind](cfg)


def feature_shape(cfg: FeaturesConfig, num_samples: int) -> tuple[int, int]:
    """(frequency bins, frames) that ``build_features(cfg)`` produces for a clip."""
    if cfg.kind in ("leaf", "waveform"):  # what the store holds: the waveform, one "bin"
        return 1, num_samples
    bins = {"mel": cfg.n_mels, "mfcc": cfg.n_mfcc, "stft": cfg.n_fft // 2 + 1, "fbank": cfg.n_mels,
            "efficientat": cfg.n_mels, "pcen": cfg.n_mels}[cfg.kind]
    if cfg.kind == "efficientat":  # pre-emphasis drops one sample, then centred frames
        return bins, 1 + (num_samples - 1) // cfg.hop_length
    if cfg.kind == "fbank":  # Kaldi frames are not centred: only whole windows inside the clip
        return bins, max(0, 1 + (num_samples - (cfg.win_length or cfg.n_fft)) // cfg.hop_length)
    return bins, num_samples // cfg.hop_length + 1


@torch.no_grad()
def compute_features(
    extractor: nn.Module, waveforms: torch.Tensor, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Features for a whole dataset, computed in batches on ``device`` and kept there."""
    extractor = extractor.to(device)
    chunks = [extractor(chunk.to(device, non_blocking=True)) for chunk in waveforms.split(batch_size)]
    return torch.cat(chunks)
