"""The fixed test signals of the front-end parity fixtures (tests/models/fixtures/front_ends.npz).

Shared by the script that ran the authors' reference code once (scripts/make_front_end_fixtures.py)
and by the tests, so both see the same samples. Everything is generated deterministically
(numpy's legacy RandomState stream never changes) except the real clip, whose 16 kHz int16
samples are stored in the fixture file itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchaudio

FIXTURES = Path(__file__).parent / "fixtures" / "front_ends.npz"
# Which ESC-50 clip and which second of it: a dog bark after digital silence (the shared copy is 16 kHz).
CLIP_FILE, CLIP_START, CLIP_RATE = "1-100032-A-0.flac", 28800, 16000
SIGNALS = ("chirp", "noise_silence", "clip", "quiet", "silence")


def make_signals(sample_rate: int, clip_16k: np.ndarray) -> dict[str, torch.Tensor]:
    """One second of each test signal at ``sample_rate``, float32 [1, samples]."""
    n = sample_rate
    t = np.arange(n) / sample_rate
    # Exponential sweep from 30 Hz to 97 % of the Nyquist frequency: every mel band sees energy once.
    f0, f1 = 30.0, 0.97 * sample_rate / 2
    rate = np.log(f1 / f0)
    chirp = 0.5 * np.sin(2 * np.pi * f0 * (np.exp(rate * t) - 1) / rate)
    noise = 0.1 * np.random.RandomState(0).standard_normal(n)
    noise[int(0.3 * n):int(0.7 * n)] = 0.0  # digital silence in the middle
    clip = torch.from_numpy(clip_16k.astype(np.float32) / 32768.0)
    if sample_rate != CLIP_RATE:  # the 16 kHz clip resampled as esc_sweep's loader does (torchaudio)
        clip = torchaudio.functional.resample(clip, CLIP_RATE, sample_rate)
    signals = {
        "chirp": torch.from_numpy(chirp.astype(np.float32)),
        "noise_silence": torch.from_numpy(noise.astype(np.float32)),
        "clip": clip,
        "quiet": clip * 0.01,  # -40 dB
        "silence": torch.zeros(n),
    }
    return {k: v.reshape(1, -1).contiguous() for k, v in signals.items()}
