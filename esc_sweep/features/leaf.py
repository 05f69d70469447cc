"""LEAF, a learnable audio front end (Zeghidour et al. 2021, "LEAF: A Learnable Frontend for Audio
Classification"): waveforms -> learnt Gabor filter bank -> squared modulus -> learnt Gaussian lowpass
pooling -> PCEN with learnt parameters (sPCEN), trained with the classifier behind it.

Written from the paper's equations:

* Gabor filter n: phi_n(t) = exp(i eta_n t) exp(-t^2 / (2 sigma_n^2)) / (sqrt(2 pi) sigma_n), t in samples
  centred on the window; eta_n (radians per sample) and sigma_n (samples) are learnt, kept in
  [0, pi] and [4, window] * sqrt(2 ln 2) / pi (so a filter neither aliases nor becomes wider than
  its window).
* Initialised on the mel scale, as the paper does: eta_n is the peak of mel triangle n (from an
  ``INIT_N_FFT``-point filter bank) and sigma_n the Gaussian whose full width at half maximum in
  frequency matches the triangle's (square-rooted) FWHM.
* Pooling: per channel a Gaussian window exp(-(t / (0.5 w (W - 1)))^2 / 2) over the W-sample window,
  width w learnt in [2 / W, 0.5] (init 0.4), applied with stride ``hop_length``.
* Compression: PCEN with per-channel alpha, delta, r and smoothing s learnt (init 0.96, 2, 0.5, 0.04,
  eps 1e-12, the paper's).
Output: [B, 1, n_filters, frames], like the other front ends, about ``num_samples / hop_length`` frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from torch.utils.checkpoint import checkpoint

from esc_sweep.features.pcen import PCEN

INIT_N_FFT = 512  # the mel filter bank the Gabor filters are initialised from (the paper's 512-point FFT)
FWHM_TO_SIGMA = math.sqrt(2 * math.log(2))
# LEAF's sPCEN initial values.
PCEN_ALPHA, PCEN_DELTA, PCEN_R, PCEN_S, PCEN_EPS = 0.96, 2.0, 0.5, 0.04, 1e-12
POOL_WIDTH_INIT, POOL_WIDTH_MAX = 0.4, 0.5
# Clips filtered at once. The filter outputs are 2 n_filters x samples per clip (80 x 80 000 floats
# for 5 s at 16 kHz, plus their FFTs): a 64-clip batch at once held ~8 GB on a CPU and was killed.
# In training each chunk is checkpointed (recomputed in the backward pass), so only the pooled
# energies, 160 times smaller, stay in memory.
CLIPS_PER_PASS = 8


def gabor_init_from_mel(n_filters: int, sample_rate: int, f_min: float, f_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(eta [n_filters] radians/sample, sigma [n_filters] samples) of Gabor filters that match mel triangles."""
    filters = torchaudio.functional.melscale_fbanks(INIT_N_FFT // 2 + 1, f_min, f_max, n_filters, sample_rate).T
    magnitude = filters.sqrt()  # the triangles are on the power spectrum; the Gabor response is in amplitude
    peak_bin = magnitude.argmax(dim=1).float()
    fwhm_bins = (magnitude >= magnitude.amax(dim=1, keepdim=True) / 2).sum(dim=1).clamp_min(1).float()
    eta = peak_bin * 2 * math.pi / INIT_N_FFT
    # A Gaussian of width sigma in time has FWHM 2 sqrt(2 ln 2) / sigma in radians/sample, i.e.
    # 2 sqrt(2 ln 2) / sigma * N / (2 pi) bins: solve for sigma.
    sigma = FWHM_TO_SIGMA * INIT_N_FFT / (math.pi * fwhm_bins)
    return eta, sigma


class GaborFilterbank(nn.Module):
    """Waveforms [B, 1, T] -> squared modulus of complex Gabor filter outputs [B, n_filters, T]."""

    def __init__(self, n_filters: int, window: int, sample_rate: int, f_min: float, f_max: float):
        super().__init__()
        eta, sigma = gabor_init_from_mel(n_filters, sample_rate, f_min, f_max)
        self.eta = nn.Parameter(eta)
        self.sigma = nn.Parameter(sigma)
        self.window = window
        self.register_buffer("t", torch.arange(window, dtype=torch.float32) - (window - 1) / 2, persistent=False)

    def impulse_responses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(real, imaginary) parts, each [n_filters, window], with eta and sigma clamped to their ranges."""
        eta = self.eta.clamp(0.0, math.pi).unsqueeze(1)
        sigma = self.sigma.clamp(4 * FWHM_TO_SIGMA / math.pi, self.window * FWHM_TO_SIGMA / math.pi).unsqueeze(1)
        envelope = torch.exp(-self.t**2 / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
        return envelope * torch.cos(eta * self.t), envelope * torch.sin(eta * self.t)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        # One FFT convolution for all 2 n real kernels (real and imaginary parts): ~10x fewer operations
        # than a direct 401-tap conv1d on a CPU, the same result ("same" padding, centred kernels).
        real, imaginary = self.impulse_responses()
        kernels = torch.cat([real, imaginary])  # [2 n, window]
        samples = waveforms.shape[-1]
        size = samples + self.window - 1
        spectrum = torch.fft.rfft(waveforms, n=size) * torch.fft.rfft(kernels, n=size)  # [B, 2 n, size // 2 + 1]
        start = self.window // 2
        out = torch.fft.irfft(spectrum, n=size)[..., start: start + samples]
        n = real.shape[0]
        return out[:, :n] ** 2 + out[:, n:] ** 2


class GaussianLowpass(nn.Module):
    """Per-channel learnt Gaussian pooling with stride: [B, C, T] -> [B, C, ~T / stride]."""

    def __init__(self, channels: int, window: int, stride: int):
        super().__init__()
        self.window, self.stride = window, stride
        self.width = nn.Parameter(torch.full((channels,), POOL_WIDTH_INIT))
        self.register_buffer("t", torch.arange(window, dtype=torch.float32) - (window - 1) / 2, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = self.width.clamp(2.0 / self.window, POOL_WIDTH_MAX).unsqueeze(1)
        kernel = torch.exp(-0.5 * (self.t / (width * (self.window - 1) / 2)) ** 2)  # [C, window]
        padded = F.pad(x, (self.window // 2, self.window // 2))
        return F.conv1d(padded, kernel.unsqueeze(1), stride=self.stride, groups=x.shape[1])


class Leaf(nn.Module):
    """``features.kind=leaf``'s model front end: waveforms [B, 1, 1, T] -> [B, 1, n_filters, frames]."""

    def __init__(self, n_filters: int, sample_rate: int, window: int, hop_length: int, f_min: float, f_max: float):
        super().__init__()
        self.filters = GaborFilterbank(n_filters, window, sample_rate, f_min, f_max)
        self.pooling = GaussianLowpass(n_filters, window, hop_length)
        # s is learnt too ("sPCEN"); PCEN's inputs here are pooled squared amplitudes.
        self.compression = PCEN(n_filters, s=PCEN_S, alpha=PCEN_ALPHA, delta=PCEN_DELTA, r=PCEN_R, eps=PCEN_EPS,
                                trainable=True, learn_smoothing=True)
        self.num_bins = n_filters

    @classmethod
    def from_features(cls, cfg) -> "Leaf":
        window = cfg.win_length or cfg.n_fft
        window += 1 - window % 2  # odd, so the filters are centred on a sample
        f_max = cfg.f_max if cfg.f_max is not None else cfg.sample_rate / 2
        return cls(cfg.n_mels, cfg.sample_rate, window, cfg.hop_length, cfg.f_min, f_max)

    def _pooled_energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooling(self.filters(x))

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = waveforms.float().reshape(waveforms.shape[0], 1, waveforms.shape[-1])
        learning = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        parts = [checkpoint(self._pooled_energy, chunk, use_reentrant=False) if learning
                 else self._pooled_energy(chunk) for chunk in x.split(CLIPS_PER_PASS)]
        return self.compression(torch.cat(parts)).unsqueeze(1)
