"""Between-class (BC) learning (Tokozume, Ushiku and Harada 2018, "Learning from Between-class
Examples for Deep Sound Recognition"), batched on the training device.

Each clip of a batch is mixed with a partner of another class at a ratio r ~ U(0, 1); the target is
the mixed label r t1 + (1 - r) t2 and the model is trained to output it with the KL divergence
(``esc_sweep.training.loop.kl_divergence``).

* Waveforms: the paper's level-aware mix. With g1, g2 each clip's gain in decibels (the maximum over
  frames of the A-weighted frame power), the ratio is corrected so that r describes how loud each
  sound is heard, not how its samples were scaled:
      p = 1 / (1 + 10^((g1 - g2) / 20) (1 - r) / r)
      mixed = (p x1 + (1 - p) x2) / sqrt(p^2 + (1 - p)^2)
  (the division keeps the mixture's power near the clips', as a sum of two independent signals).
* Spectrograms (every model but the waveform ones): the simple mix r x1 + (1 - r) x2 of the inputs,
  what the BC paper's image experiments ("BC learning for images", Tokozume et al. 2018) call BC.

Partners: for each clip one other clip of the batch with a different label, uniformly at random
(a random score per pair, same-class pairs excluded, argmax); a clip whose batch has no other class
mixes with itself, which leaves it and its label unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MIN_DB = -80.0  # the floor of a frame's power, as the paper's compute_gain


def a_weighting_db(frequencies: torch.Tensor) -> torch.Tensor:
    """The A-weighting curve (IEC 61672) in decibels at ``frequencies`` in Hz, floored at MIN_DB."""
    f2 = frequencies.double().pow(2).clamp_min(1.0)  # 0 Hz would be -inf dB: the floor takes it anyway
    db = 2.0 + 20.0 * (2 * math.log10(12194.0) + 2 * torch.log10(f2) - torch.log10(f2 + 12194.0**2)
                       - torch.log10(f2 + 20.6**2) - 0.5 * torch.log10(f2 + 107.7**2)
                       - 0.5 * torch.log10(f2 + 737.9**2))
    return db.clamp_min(MIN_DB)


def gain_n_fft(sample_rate: int) -> int:
    """Frame length for the gain: the paper's 2048 at 16 kHz and 4096 at 44.1 kHz, i.e. ~0.1 s, a power of two."""
    return 1 << max(6, round(math.log2(0.1 * sample_rate)))


def clip_gain_db(waveforms: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Each clip's gain [B] in dB: max over half-overlapping Hann frames of the A-weighted power, >= MIN_DB.

    ``waveforms`` [B, T] (any leading shape flattened to B). A clip shorter than one frame is one zero-padded frame.
    """
    x = waveforms.reshape(waveforms.shape[0], -1).float()
    n_fft = gain_n_fft(sample_rate)
    if x.shape[-1] < n_fft:
        x = nn.functional.pad(x, (0, n_fft - x.shape[-1]))
    frames = x.unfold(-1, n_fft, n_fft // 2)  # [B, frames, n_fft]
    window = torch.hann_window(n_fft, periodic=True, device=x.device)
    power = torch.fft.rfft(frames * window).abs().pow(2)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, device=x.device)
    weight = torch.pow(10.0, a_weighting_db(freqs) / 10).to(power.dtype)
    frame_power = (power * weight).sum(-1).clamp_min(10 ** (MIN_DB / 10))
    return 10 * torch.log10(frame_power.amax(dim=-1))


def level_aware_ratio(r: torch.Tensor, gain1: torch.Tensor, gain2: torch.Tensor) -> torch.Tensor:
    """The paper's p = 1 / (1 + 10^((g1 - g2) / 20) (1 - r) / r), written to stay finite at r = 0 and 1."""
    # r / (r + 10^((g1 - g2)/20) (1 - r)): the same value, no division by r.
    factor = torch.pow(10.0, (gain1 - gain2) / 20)
    return r / (r + factor * (1 - r))


def level_aware_mix(x1: torch.Tensor, x2: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(p x1 + (1 - p) x2) / sqrt(p^2 + (1 - p)^2), ``p`` [B] broadcast over the other axes."""
    p = p.view(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
    return (p * x1 + (1 - p) * x2) / torch.sqrt(p**2 + (1 - p) ** 2)


def different_class_partners(soft_targets: torch.Tensor) -> torch.Tensor:
    """For each row, a random other row with another label (argmax of its targets); itself when none."""
    labels = soft_targets.argmax(dim=1)
    batch = labels.shape[0]
    scores = torch.rand(batch, batch, device=soft_targets.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    scores = scores.masked_fill(same, -1.0)
    partner = scores.argmax(dim=1)
    has_other = (~same).any(dim=1)
    return torch.where(has_other, partner, torch.arange(batch, device=soft_targets.device))


class BCMix(nn.Module):
    """Mix every clip with a partner of another class; returns the mixtures and the mixed targets.

    ``sample_rate`` given: waveforms [B, 1, 1, T], mixed level-aware; None: spectrograms, mixed simply.
    """

    def __init__(self, sample_rate: int | None = None):
        super().__init__()
        self.sample_rate = sample_rate

    def forward(self, x: torch.Tensor, soft_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        partner = different_class_partners(soft_targets)
        r = torch.rand(batch, device=x.device)
        x2 = x[partner]
        if self.sample_rate is not None:
            p = level_aware_ratio(r, clip_gain_db(x, self.sample_rate), clip_gain_db(x2, self.sample_rate))
            mixed = level_aware_mix(x, x2, p)
        else:
            rx = r.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
            mixed = rx * x + (1 - rx) * x2
        # The label mixes at r, the ratio as heard, not p (the paper's).
        targets = r.view(-1, 1) * soft_targets + (1 - r.view(-1, 1)) * soft_targets[partner]
        return mixed, targets
