"""Class-separable synthetic audio for quick tests and smoke runs.

Class ``c`` is a harmonic stack (fundamental plus two overtones) at its own
fundamental frequency, log-spaced between 150 Hz and a fraction of the
Nyquist frequency, with random amplitude, phase, onset and a little frequency
jitter, plus white noise. Everything is drawn from a generator seeded with
``dataset.synthetic_seed``, so a config always yields the same clips.
Folds are assigned round-robin within each class (1..num_folds).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from esc_sweep.data.clipset import ClipSet, check_class_names, fingerprint_of, remap_targets, require_classes, \
    requested_classes
from esc_sweep.data.clipset import option as _opt
from esc_sweep.data.audio import num_samples_for
from esc_sweep.errors import DataError

F_LOW = 150.0
# Relative jitter of the fundamental; well under half the spacing between classes.
_JITTER = 0.2
_CHUNK = 64


def class_frequencies(num_classes: int, sample_rate: int) -> torch.Tensor:
    """Fundamental frequency of each class (Hz), float64 ``[num_classes]``."""
    f_high = min(4000.0, 0.3 * sample_rate)
    if f_high <= F_LOW * 1.5:
        raise DataError(
            f"synthetic data needs features.sample_rate >= {int(F_LOW * 5)} Hz to place distinct tones, got {sample_rate}"
        )
    if num_classes == 1:
        return torch.tensor([F_LOW], dtype=torch.float64)
    return torch.logspace(math.log10(F_LOW), math.log10(f_high), num_classes, dtype=torch.float64)


def generate(
    num_classes: int,
    clips_per_class: int,
    sample_rate: int,
    num_samples: int,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms float32 ``[C * K, num_samples]`` (class-major) and targets int64."""
    if num_classes < 1 or clips_per_class < 1:
        raise DataError(
            f"synthetic data needs dataset.num_classes >= 1 and dataset.clips_per_class >= 1, "
            f"got {num_classes} and {clips_per_class}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    n = num_classes * clips_per_class
    targets = torch.arange(num_classes).repeat_interleave(clips_per_class)
    freqs = class_frequencies(num_classes, sample_rate)
    if num_classes > 1:
        step = math.log(float(freqs[1] / freqs[0]))
    else:
        step = 0.5
    jitter = torch.exp((torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * _JITTER * step)
    f0 = freqs[targets] * jitter  # [N]
    amplitude = 0.2 + 0.6 * torch.rand(n, generator=gen, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(n, 3, generator=gen, dtype=torch.float64)
    onset = (0.25 * num_samples * torch.rand(n, generator=gen)).long()
    noise_level = 0.01 + 0.05 * torch.rand(n, generator=gen, dtype=torch.float64)

    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate  # [S]
    idx = torch.arange(num_samples)[None, :]
    nyquist = sample_rate / 2
    fade = max(1, int(0.01 * sample_rate))
    out = torch.empty(n, num_samples, dtype=torch.float32)
    # Rows in chunks, so that float64 phases never exist for the whole set at once.
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        wave = torch.zeros(hi - lo, num_samples, dtype=torch.float32)
        for k, weight in ((1, 1.0), (2, 0.5), (3, 0.25)):
            fk = f0[lo:hi] * k
            audible = (fk < 0.95 * nyquist).to(torch.float32)
            # Phase in float64 (exact for long clips), sine in float32 (fast).
            angle = (2 * math.pi * torch.frac(fk[:, None] * t[None, :]) + phase[lo:hi, k - 1 : k]).to(torch.float32)
            wave += (weight * audible)[:, None] * torch.sin(angle)
        # Silence before the onset, then a short fade-in.
        envelope = ((idx - onset[lo:hi, None]).to(torch.float32) / fade).clamp(0, 1)
        wave = amplitude[lo:hi, None].to(torch.float32) * envelope * wave / 1.75
        noise = torch.randn(hi - lo, num_samples, generator=gen)
        out[lo:hi] = wave + noise_level[lo:hi, None].to(torch.float32) * noise
    return out, targets


def load_synthetic(dataset: Any, sample_rate: int) -> ClipSet:
    num_classes = int(_opt(dataset, "num_classes", 5))
    clips_per_class = int(_opt(dataset, "clips_per_class", 20))
    num_folds = int(_opt(dataset, "num_folds", 5))
    seed = int(_opt(dataset, "synthetic_seed", 0))
    clip_seconds = float(_opt(dataset, "clip_seconds", 5.0))
    label = str(_opt(dataset, "label", "target"))
    if label != "target":
        raise DataError(f"dataset.label={label!r} is only defined for ESC-50: use dataset.label=target for synthetic data")
    if num_folds < 1:
        raise DataError(f"dataset.num_folds={num_folds}: must be >= 1")
    if clips_per_class < num_folds:
        raise DataError(
            f"dataset.clips_per_class={clips_per_class} is less than dataset.num_folds={num_folds}: "
            f"every fold needs a clip of each class"
        )
    num_samples = num_samples_for(clip_seconds, sample_rate)

    waveforms, raw_targets = generate(num_classes, clips_per_class, sample_rate, num_samples, seed)
    names = [f"class_{c}" for c in range(num_classes)]
    within = torch.arange(clips_per_class).repeat(num_classes)
    folds = within % num_folds + 1
    clip_ids = [f"synthetic-{c}-{i:04d}" for c in range(num_classes) for i in range(clips_per_class)]

    keep = torch.arange(len(clip_ids))
    requested = requested_classes(dataset)
    if requested is not None:
        check_class_names(requested, names, "the synthetic dataset")
        wanted = torch.tensor([names.index(c) for c in requested])
        keep = torch.isin(raw_targets, wanted).nonzero().flatten()
    rows = keep.tolist()
    targets, class_names = remap_targets(raw_targets[keep].tolist(), dict(enumerate(names)))
    require_classes(class_names, requested, "the synthetic dataset", fix=": set dataset.num_classes >= 2")
    clip_ids = [clip_ids[i] for i in rows]
    fingerprint = fingerprint_of(
        kind="synthetic",
        seed=seed,
        num_classes=num_classes,
        clips_per_class=clips_per_class,
        num_folds=num_folds,
        sample_rate=sample_rate,
        num_samples=num_samples,
        classes=class_names,
    )
    return ClipSet(
        waveforms=waveforms[keep].contiguous(),
        targets=targets,
        folds=folds[keep].to(torch.long),
        class_names=class_names,
        clip_ids=clip_ids,
        groups=list(clip_ids),
        sample_rate=sample_rate,
        num_folds=num_folds,
        fingerprint=fingerprint,
    )
