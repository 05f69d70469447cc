"""What ``esc-sweep serve`` computes, without any Gradio: a file tagged window by window, a batch of
files, and a live microphone stream tagged over a sliding window.

The Gradio app (``esc_sweep.app.gradio_app``) calls these; so do the tests and
``benchmarks/live_latency.py``, which need no web server.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from esc_sweep.app.predict import predict_one
from esc_sweep.data.audio import iter_windows, probe, resample
from esc_sweep.errors import DataError, EscSweepError

# The same limits as the earlier hand-written server: the header is checked before any decoding.
MAX_UPLOAD_SECONDS = 600.0
# The spectrogram picture covers at most this many seconds (the predictions cover the whole file).
MAX_SPECTROGRAM_SECONDS = 30.0
TOP_K = 5
WINDOW_BATCH = 32  # windows per forward pass: memory stays bounded however long the recording
# A live chunk longer than this is cut to its end: the browser sends about half a second at a time.
MAX_LIVE_CHUNK_SECONDS = 30.0


def short_name(bundle: Any) -> str:
    """A name for a bundle in column headers: its run folder (``<run>/bundle``), folder or run id."""
    path = Path(str(bundle.source))
    if path.name == "bundle" and path.parent.name:
        return path.parent.name
    return path.name or str(bundle.source)


def model_names(bundles: Sequence[Any]) -> list[str]:
    """One distinct name per bundle, numbered when there are several (two runs may share a folder name)."""
    names = [short_name(b) for b in bundles]
    if len(bundles) == 1:
        return names
    return [f"{i}: {name}" for i, name in enumerate(names, start=1)]


def as_label(bundle: Any, probabilities: torch.Tensor, k: int = TOP_K) -> dict[str, float]:
    """``{class: probability}`` of the ``k`` most likely classes (what ``gr.Label`` shows)."""
    return {label: p for label, p in bundle.top_k(probabilities, k)}


# --------------------------------------------------------------------------
# One file


@dataclass
class FileTags:
    name: str
    seconds: float  # the recording's length
    probabilities: torch.Tensor  # [C]: the whole recording, as ``esc-sweep predict`` averages it
    window_probabilities: torch.Tensor  # [W, C]: each clip-length window on its own
    spectrogram: np.ndarray  # [F, frames] dB of the first MAX_SPECTROGRAM_SECONDS
    spectrogram_is_whole: bool


def tag_file(bundle: Any, path: str | Path, name: Optional[str] = None,
             max_seconds: float = MAX_UPLOAD_SECONDS) -> FileTags:
    """Decode ``path`` window by window and tag each window and the whole.

    The header is checked first (a 600 KB FLAC can claim an hour of audio), then
    windows are decoded, resampled and classified ``WINDOW_BATCH`` at a time; the
    whole-recording probabilities weight each window by its share of real audio,
    exactly as :meth:`Bundle.predict_windows` does for ``esc-sweep predict``.
    Errors are DataError/EscSweepError naming the file by ``name`` (the user does
    not know the server's temporary path).
    """
    name = name or Path(path).name
    try:
        return _tag_file(bundle, Path(path), name, max_seconds)
    except EscSweepError as err:
        raise type(err)(str(err).replace(str(path), name)) from None


def _tag_file(bundle: Any, path: Path, name: str, max_seconds: float) -> FileTags:
    info = probe(path, max_seconds=max_seconds)
    clip = bundle.clip_samples
    total = None if info.frames is None else int(round(info.frames * bundle.sample_rate / info.sample_rate))
    shown_windows = max(1, int(MAX_SPECTROGRAM_SECONDS * bundle.sample_rate) // clip)
    kept: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        rows.append(bundle.predict(torch.stack(batch)).double())  # a clip-length row is one window
        batch.clear()

    for index, window in enumerate(iter_windows(path, bundle.sample_rate, clip, max_seconds=max_seconds)):
        if len(kept) < shown_windows:
            kept.append(window)
        batch.append(bundle.fill_short(window, total) if index == 0 else window)  # only a first window is short
        if len(batch) == WINDOW_BATCH:
            flush()
    if batch:
        flush()
    if not rows:
        raise DataError(f"audio file {name} contains no audio samples")
    per_window = torch.cat(rows)
    count = per_window.shape[0]
    if total is None:
        real = torch.ones(count, dtype=torch.float64)
    else:
        real = torch.clamp(total - torch.arange(count, dtype=torch.float64) * clip, 0, clip) / clip
    whole = (per_window * real[:, None]).sum(0) / max(float(real.sum()), 1e-12)
    shown = torch.cat(kept)
    if total is not None:
        shown = shown[:total]
    seconds = info.seconds if info.seconds is not None else count * bundle.clip_seconds
    return FileTags(
        name=name,
        seconds=float(seconds),
        probabilities=whole.float(),
        window_probabilities=per_window.float(),
        spectrogram=bundle.spectrogram(shown)[0, 0].cpu().numpy(),
        spectrogram_is_whole=count <= len(kept),
    )


def file_figure(bundle: Any, tags: FileTags):
    """The spectrogram with the per-window predictions below it (a matplotlib Figure)."""
    from esc_sweep.figures.timeline import window_predictions_figure  # deferred: matplotlib (~1.9 s), first figure only

    features = bundle.config["features"]
    title = f"{tags.name}: log-{features['kind']} spectrogram"
    if not tags.spectrogram_is_whole:
        title += f" (first {MAX_SPECTROGRAM_SECONDS:g} of {tags.seconds:.0f} s)"
    return window_predictions_figure(
        tags.spectrogram, bundle.sample_rate, int(features["hop_length"]), features["kind"],
        tags.window_probabilities, bundle.clip_seconds, bundle.class_names, title=title,
        spectrogram_is_whole=tags.spectrogram_is_whole,
    )


# --------------------------------------------------------------------------
# Many files


def batch_rows(bundles: Sequence[Any], files: Sequence[tuple[str, str | Path]],
               max_seconds: float = MAX_UPLOAD_SECONDS) -> tuple[list[str], list[list[Any]]]:
    """``(header, rows)``: one row per ``(name, path)`` with each model's label and probability.

    Uses ``esc-sweep predict``'s own per-file path; a file that cannot be read gets its
    error in the ``error`` column and the others are still tagged.
    """
    names = model_names(bundles)
    header = ["file", "seconds"]
    for model in names:
        suffix = "" if len(bundles) == 1 else f" ({model})"
        header += [f"label{suffix}", f"probability{suffix}"]
    header.append("error")
    rows = []
    for name, path in files:
        row: list[Any] = [name, None]
        error = ""
        for bundle in bundles:
            try:
                record = predict_one(bundle, Path(path), 1, max_seconds)
            except EscSweepError as err:
                error = str(err).replace(str(path), name)
                row += ["", None]
                continue
            row[1] = record["seconds"]
            row += [record["label"], round(record["probability"], 6)]
        rows.append(row + [error])
    return header, rows


# --------------------------------------------------------------------------
# Live microphone


@dataclass
class LiveStream:
    """One listener's state: the last clip-length seconds heard, at the microphone's own rate.

    Held in a ``gr.State`` per browser session; it keeps no model (state values are
    copied by Gradio), only numbers.
    """

    sample_rate: int = 0
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    chunks: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def heard_seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate if self.sample_rate else 0.0

    def latency_summary(self) -> str:
        recent = self.latencies_ms[-50:]
        if not recent:
            return ""
        return f"median {statistics.median(recent):.0f} ms over the last {len(recent)} chunk(s)"


def as_float_mono(samples: np.ndarray) -> np.ndarray:
    """float32 mono in [-1, 1] from what a browser recording decodes to (int16 PCM, any channels)."""
    data = np.asarray(samples)
    if np.issubdtype(data.dtype, np.integer):
        scale = float(2 ** (8 * data.dtype.itemsize - 1))
        data = data.astype(np.float32) / scale
    data = data.astype(np.float32, copy=False)
    if data.ndim == 2:
        data = data.mean(axis=1, dtype=np.float64).astype(np.float32)
    if data.ndim != 1:
        raise DataError(f"expected audio shaped [samples] or [samples, channels], got {data.shape}")
    if not np.isfinite(data).all():
        raise DataError("the audio chunk contains NaN or infinite samples")
    return data


def live_step(bundles: Sequence[Any], stream: Optional[LiveStream], sample_rate: int, samples: np.ndarray,
              k: int = TOP_K) -> tuple[list[dict[str, float]], LiveStream, float]:
    """Add one chunk to the sliding window and tag the window with every model.

    Returns ``(labels per model, stream, milliseconds from the chunk's arrival to the labels)``.
    The ring buffer holds the last ``clip_seconds`` (the longest of the models) at the
    microphone's rate; each model hears it resampled to its own rate. Until a clip's
    worth has been heard, the models hear what there is (padded with silence).
    """
    started = time.perf_counter()
    if stream is None or stream.sample_rate != int(sample_rate):  # a new recording, or a new device
        stream = LiveStream(sample_rate=int(sample_rate))
    if stream.sample_rate <= 0:
        raise DataError(f"the audio chunk has an invalid sample rate ({sample_rate} Hz)")
    chunk = as_float_mono(samples)
    capacity = int(round(max(b.clip_seconds for b in bundles) * stream.sample_rate))
    keep = min(capacity, int(MAX_LIVE_CHUNK_SECONDS * stream.sample_rate))
    stream.samples = np.concatenate([stream.samples, chunk[-keep:]])[-capacity:]
    stream.chunks += 1
    labels = []
    heard = torch.from_numpy(stream.samples)
    for bundle in bundles:
        wave = heard[-int(round(bundle.clip_seconds * stream.sample_rate)):]
        wave = resample(wave, stream.sample_rate, bundle.sample_rate)[: bundle.clip_samples]
        if wave.numel() == 0:
            wave = torch.zeros(1)
        labels.append(as_label(bundle, bundle.predict(wave)[0], k))
    milliseconds = 1000 * (time.perf_counter() - started)
    stream.latencies_ms = (stream.latencies_ms + [milliseconds])[-200:]
    return labels, stream, milliseconds
