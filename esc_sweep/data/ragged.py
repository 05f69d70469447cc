"""Whole clips of different lengths in one flat int16 buffer (``dataset.variable_length=true``).

Why int16 and one buffer: FSDKaggle2018's 9473 training clips (0.3 to 30 s) are
about 18 hours of audio. Padded to the longest clip they would take 9473 x 30 s;
as float32 twice int16's bytes. Flat int16 costs 2 bytes per real sample and
nothing for padding (docs/datasets.md has the measured peak RSS).

A clip is ``samples[offsets[i] : offsets[i] + lengths[i]]``. :meth:`RaggedWaveforms.windows`
gathers fixed-length windows at any starts with one indexing operation (no
per-clip Python), zero past either end of a clip: the training crops and the
evaluation windows are both built from it.

Cached on disk as one ``torch.save`` file per (files, rate), beside the
fixed-length cache (``esc_sweep.data.cache``), written atomically.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from esc_sweep.data import audio
from esc_sweep.data.cache import (cache_path, content_digests, default_cache_dir, files_fingerprint, run_in_threads,
                                  save_cache_file)
from esc_sweep.errors import DataError

log = logging.getLogger(__name__)

RAGGED_CACHE_VERSION = 1
_SCALE = 32767.0


@dataclass
class RaggedWaveforms:
    samples: torch.Tensor  # int16 [total samples], every clip back to back
    offsets: torch.Tensor  # int64 [N], first sample of each clip in ``samples``
    lengths: torch.Tensor  # int64 [N], samples of each clip (>= 1)

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def subset(self, index: torch.Tensor) -> "RaggedWaveforms":
        """The selected clips; the buffer is shared, not copied."""
        index = torch.as_tensor(index, dtype=torch.long)
        return RaggedWaveforms(self.samples, self.offsets[index], self.lengths[index])

    def to(self, device: torch.device) -> "RaggedWaveforms":
        return RaggedWaveforms(self.samples.to(device), self.offsets.to(device), self.lengths.to(device))

    @property
    def nbytes(self) -> int:
        return self.samples.numel() * self.samples.element_size()

    def windows(self, clips: torch.Tensor, starts: torch.Tensor, length: int, repeat_short: bool = False) -> torch.Tensor:
        """Float32 ``[len(clips), length]``: clip ``clips[k]`` from sample ``starts[k]`` (may be negative),
        zero wherever the window lies outside the clip. ``repeat_short``: a clip shorter than the window
        is repeated end to end instead, from sample ``starts[k]`` of it (``dataset.short_clips=repeat``)."""
        clips = clips.to(self.offsets.device)
        positions = starts.to(self.offsets.device)[:, None] + torch.arange(length, device=self.offsets.device)
        lengths = self.lengths[clips][:, None]
        inside = (positions >= 0) & (positions < lengths)
        if repeat_short:
            tiled = lengths < length
            positions = torch.where(tiled, positions.remainder(lengths), positions)
            inside = inside | tiled
        flat = self.offsets[clips][:, None] + positions.clamp(min=0).minimum(lengths - 1)
        return self.samples[flat].float().mul_(1.0 / _SCALE).masked_fill_(~inside, 0.0)

    def random_crops(self, clips: torch.Tensor, length: int, generator: Optional[torch.Generator] = None,
                     repeat_short: bool = False) -> torch.Tensor:
        """A random window of ``length`` samples of each clip. A clip shorter than the window lies at a
        random place inside it, zero-padded on both sides (what ``predict`` does to a short file is pad it
        with zeros after the end; the random place teaches the model that the position does not matter).
        ``repeat_short``: a short clip is repeated end to end from a random sample of it instead."""
        lengths = self.lengths[clips.to(self.lengths.device)]
        low = torch.clamp(lengths - length, max=0)  # a short clip: start before it (left padding)
        high = torch.clamp(lengths - length, min=0)  # a long clip: start anywhere the window fits
        if repeat_short:  # a short clip: start at any of its samples (a random phase of the repetition)
            low = torch.where(lengths < length, torch.zeros_like(low), low)
            high = torch.where(lengths < length, lengths - 1, high)
        u = torch.rand(len(lengths), generator=generator, device="cpu" if generator is not None else lengths.device)
        span = high - low
        starts = low + torch.minimum((u.to(lengths.device) * (span + 1).float()).long(), span)
        return self.windows(clips, starts, length, repeat_short)

    def evaluation_windows(self, clips: torch.Tensor, length: int,
                           repeat_short: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``predict``'s windows of each clip: starts 0, length, 2 length, ... until one reaches the end.

        Returns (owner row in ``clips`` per window, start per window, weight per window). The weight is the
        share of the window that is real audio, as ``Bundle.predict_windows`` weighs a zero-padded last window
        (1 for a short clip's one window under ``repeat_short``: it is all audio).
        """
        lengths = self.lengths[clips.to(self.lengths.device)]
        counts = torch.clamp((lengths + length - 1) // length, min=1)  # = audio.num_windows(n, length) with hop=length
        owner = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), counts)
        first = torch.cumsum(counts, 0) - counts
        position = torch.arange(int(counts.sum()), device=lengths.device) - first[owner]
        starts = position * length
        weight = (lengths[owner] - starts).clamp(max=length).float() / length
        if repeat_short:
            weight = torch.where(lengths[owner] < length, torch.ones_like(weight), weight)
        return owner, starts, weight


def decode_whole(path: Path, sample_rate: int) -> torch.Tensor:
    """The whole file as float32 mono at ``sample_rate`` (at least one sample)."""
    data, rate = audio.read_audio(path, max_seconds=None)
    mono = torch.from_numpy(np.ascontiguousarray(audio.to_mono(data), dtype=np.float32))
    wave = audio.resample(mono, rate, int(sample_rate))
    if not bool(torch.isfinite(wave).all()):
        raise DataError(f"{path} holds NaN or infinite samples: re-export it or leave it out")
    if wave.numel() == 0:
        wave = torch.zeros(1)
    return wave


def _to_int16(wave: torch.Tensor) -> torch.Tensor:
    return (wave.clamp(-1.0, 1.0) * _SCALE).round_().to(torch.int16)


def expected_length(info: audio.AudioInfo, sample_rate: int) -> Optional[int]:
    """Samples of the file at ``sample_rate`` as :func:`decode_whole` returns them; None when the header
    does not say how long it is."""
    if info.frames is None:
        return None
    if info.sample_rate == sample_rate:
        return max(1, info.frames)
    o, n = audio._ratio(info.sample_rate, sample_rate)
    return max(1, -(-info.frames * n // o))  # resample's ceil(len * new / orig)


def decode_ragged(paths: Sequence[Path], sample_rate: int, *, description: str = "Decoding audio",
                  progress: bool = True, num_workers: Optional[int] = None) -> RaggedWaveforms:
    """Decode every file whole (thread pool), as int16, into one buffer sized from the headers.

    Each worker writes its clip straight into its slice of the buffer: the peak is the buffer plus one
    float32 clip per worker, not the clips and their joined copy (measured: docs/datasets.md). A file
    whose header gives no length is decoded first to learn it.
    """
    n = len(paths)
    infos = [audio.probe(p) for p in paths]
    known = [expected_length(info, int(sample_rate)) for info in infos]
    early: dict[int, torch.Tensor] = {}
    for i, length in enumerate(known):
        if length is None:  # no length in the header (rare): decode it now to learn it
            early[i] = _to_int16(decode_whole(paths[i], sample_rate))
            known[i] = early[i].numel()
    lengths = torch.tensor(known, dtype=torch.long)
    offsets = torch.cumsum(lengths, 0) - lengths
    # torch.empty: a page is only resident once a worker writes into it.
    samples = torch.empty(int(lengths.sum()) if n else 0, dtype=torch.int16)
    workers = max(1, min(num_workers or min(8, (os.cpu_count() or 1) + 2), max(1, n)))

    def job(i: int) -> None:
        clip = early.pop(i) if i in early else _to_int16(decode_whole(paths[i], sample_rate))
        start, length = int(offsets[i]), int(lengths[i])
        used = min(length, clip.numel())  # a header a sample off (rounding) must not shift the next clip
        samples[start : start + used] = clip[:used]
        samples[start + used : start + length] = 0

    run_in_threads(job, n, workers, description, progress)
    return RaggedWaveforms(samples, offsets, lengths)


def load_ragged(paths: Sequence[Path], clip_ids: Sequence[str], sample_rate: int, *, cache_dir: Optional[str] = None,
                root: Optional[Path] = None, prefix: str = "dataset", description: str = "Decoding audio",
                progress: bool = True, digests: Optional[Sequence[str]] = None) -> RaggedWaveforms:
    """The cached whole clips of these files (same names and contents), else decoded and cached."""
    paths = [Path(p) for p in paths]
    folder = default_cache_dir(cache_dir)
    if digests is None:
        digests = content_digests(paths, root, folder)
    target = cache_path(folder, f"{prefix}-whole", files_fingerprint(paths, root, digests), sample_rate, 0)
    cached = _read(target, clip_ids, sample_rate)
    if cached is not None:
        return cached
    ragged = decode_ragged(paths, sample_rate, description=description, progress=progress)
    _write(target, ragged, list(clip_ids), sample_rate)
    return ragged


def _read(target: Path, clip_ids: Sequence[str], sample_rate: int) -> Optional[RaggedWaveforms]:
    if not target.is_file():
        return None
    try:
        payload = torch.load(target, map_location="cpu", weights_only=True, mmap=True)
        ok = (isinstance(payload, dict) and payload.get("version") == RAGGED_CACHE_VERSION
              and payload.get("sample_rate") == int(sample_rate) and list(payload.get("clip_ids", [])) == list(clip_ids))
        if ok:
            ragged = RaggedWaveforms(payload["samples"], payload["offsets"], payload["lengths"])
            if (ragged.samples.dtype == torch.int16 and len(ragged) == len(clip_ids)
                    and int(ragged.lengths.sum()) == ragged.samples.numel()):
                return ragged
        log.warning("ignoring stale or foreign waveform cache %s; decoding again", target)
    except Exception as exc:  # a corrupt cache is rebuilt, never fatal
        log.warning("ignoring unreadable waveform cache %s (%s); decoding again", target, exc)
    return None


def _write(target: Path, ragged: RaggedWaveforms, clip_ids: list, sample_rate: int) -> None:
    save_cache_file(target, {"version": RAGGED_CACHE_VERSION, "sample_rate": int(sample_rate), "clip_ids": clip_ids,
                             "samples": ragged.samples, "offsets": ragged.offsets, "lengths": ragged.lengths})
