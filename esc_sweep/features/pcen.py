"""Per-channel energy normalisation (PCEN; Wang et al. 2017, "Trainable frontend for robust and
far-field keyword spotting"), in place of the log on mel energies.

For energies E(t, f) (a mel power spectrogram), per channel f:

    M(t) = (1 - s) M(t - 1) + s E(t)                 a first-order IIR smoother over time
    PCEN(t) = (E(t) / (eps + M(t))^alpha + delta)^r - delta^r

The division by the smoothed energy is an automatic gain control (a clip's level and a stationary
background mostly cancel), and the root compresses like a log without its blow-up at zero.

Defaults are librosa.pcen's (0.11): alpha 0.98, delta 2, r 0.5, eps 1e-6, s from a 0.4 s time
constant with librosa's formula ``s = (sqrt(1 + 4 T^2) - 1) / (2 T^2)``, T the time constant in
frames. One difference, on purpose: the smoother starts in the steady state of the clip's own first
frame (M(-1) = E(0)), where librosa starts from the steady state of an input of 1 (``lfilter_zi``),
which would make the first frames depend on the recording level.

Trainable (``features.pcen_trainable``): alpha, delta and r are learnt per channel, stored as their
logarithms as in the paper (so they stay positive); LEAF (``esc_sweep.features.leaf``) also learns s
per channel ("sPCEN"), stored as its logit so it stays in (0, 1). They are ``nn.Parameter``s of the
model, so the bundle carries them; fixed, they are buffers, so it carries them too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Librosa's defaults (librosa.pcen 0.11), which follow the paper's recommended values.
ALPHA, DELTA, R, EPS, TIME_CONSTANT = 0.98, 2.0, 0.5, 1e-6, 0.4
# The smoother is applied as a convolution with its impulse response s (1 - s)^j, cut where (1 - s)^j
# falls below this: far below float32's resolution of the sum it is added to.
TAIL = 1e-7


def smoothing_coefficient(time_constant: float, frames_per_second: float) -> float:
    """librosa's s for a time constant in seconds: the IIR smoother whose squared response has that FWHM."""
    t_frames = time_constant * frames_per_second
    return (math.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)


def smooth(energy: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """M(t) = (1 - s) M(t - 1) + s E(t) along the last axis, with M(-1) = E(0); ``s`` [channels] per axis -2.

    Computed as one FFT convolution with the truncated impulse response (batched, differentiable in s)
    instead of a Python loop over frames, in float64: a float32 FFT's error is relative to the loudest
    frame, so a quiet frame after a loud one would get a smoothed energy of mostly rounding error. Left padding with copies of the first frame is the steady
    state M(-1) = E(0): the infinite sum of s (1 - s)^j E(0) over the padded frames.
    """
    dtype, energy = energy.dtype, energy.double()  # float32 FFT error scales with the loudest frame: quiet ones drown
    frames = energy.shape[-1]
    decay = (1 - s.detach().max()).clamp(1e-6, 1 - 1e-6)  # the slowest channel decides the length
    # Longer than the clip the response need not be: frames + 1 taps make the sum below exact.
    taps = int(min(max(1, math.ceil(math.log(TAIL) / math.log(float(decay)))), frames + 1))
    j = torch.arange(taps, device=energy.device, dtype=energy.dtype)
    s = s.to(energy.dtype).view(-1, 1)
    kernel = s * torch.exp(j * torch.log1p(-s))  # [channels, taps]: s (1 - s)^j
    # Whatever lies beyond the cut, a geometric tail of E(0), is added back exactly below.
    padded = torch.cat([energy[..., :1].expand(*energy.shape[:-1], taps - 1), energy], dim=-1)  # M(-1) = E(0)
    size = padded.shape[-1] + taps - 1
    spectrum = torch.fft.rfft(padded, n=size) * torch.fft.rfft(kernel, n=size)
    out = torch.fft.irfft(spectrum, n=size)[..., taps - 1: taps - 1 + frames]
    # Every frame's terms j >= taps lie before the padding, all on E(0): sum_{j >= taps} s (1 - s)^j = (1 - s)^taps.
    # (With taps > frames nothing else is cut, so the sum is exact; shorter, what is cut weighs < TAIL.)
    tail = torch.exp(taps * torch.log1p(-s))  # [channels, 1]
    return (out + tail * energy[..., :1]).to(dtype)


class PCEN(nn.Module):
    """Energies [..., channels, frames] (>= 0) -> PCEN, the same shape."""

    def __init__(self, channels: int, s: float, alpha: float = ALPHA, delta: float = DELTA, r: float = R,
                 eps: float = EPS, trainable: bool = False, learn_smoothing: bool = False):
        super().__init__()
        self.eps = eps

        def store(name: str, value: torch.Tensor, learn: bool) -> None:
            if learn:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

        full = torch.ones(channels)
        store("log_alpha", full * math.log(alpha), trainable)
        store("log_delta", full * math.log(delta), trainable)
        store("log_r", full * math.log(r), trainable)
        store("logit_s", full * math.log(s / (1 - s)), trainable and learn_smoothing)

    @property
    def s(self) -> torch.Tensor:
        return torch.sigmoid(self.logit_s)

    def forward(self, energy: torch.Tensor) -> torch.Tensor:
        energy = energy.float()  # the smoother's sums and the powers below need float32 even under autocast
        alpha, delta, r = (p.exp().view(-1, 1) for p in (self.log_alpha, self.log_delta, self.log_r))
        smoothed = smooth(energy, self.s)
        # E / (eps + M)^alpha in log space, as librosa does: (eps + M)^alpha can overflow in float32
        # only where E does, but the log keeps tiny M exact.
        gained = energy * torch.exp(-alpha * torch.log(self.eps + smoothed.clamp_min(0)))
        return (gained + delta).pow(r) - delta.pow(r)


class PCENFromDecibels(nn.Module):
    """``features.kind=pcen``'s model front end: the stored decibel mel spectrogram [B, 1, F, T] -> PCEN.

    The store keeps decibels (so the decibel augmentations, gain, masks, band limit, apply unchanged);
    this turns them back into energies, ``10^(dB / 10)``, and applies PCEN in place of the log.
    """

    def __init__(self, pcen: PCEN):
        super().__init__()
        self.pcen = pcen

    def forward(self, decibels: torch.Tensor) -> torch.Tensor:
        energy = torch.pow(10.0, decibels.float() / 10.0)
        return self.pcen(energy)
