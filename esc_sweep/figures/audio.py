"""Pictures of audio: waveforms, spectrograms, and clips with a model's top predictions (matplotlib Agg)."""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_FREQUENCY_AXIS = {"mel": "mel band", "mfcc": "MFCC coefficient", "stft": "frequency bin", "fbank": "mel band"}
# What the colour bar measures: Kaldi fbank is a natural log, MFCCs have no unit.
_VALUE_LABEL = {"mfcc": "", "fbank": "ln energy"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas, no pyplot: works headless and in server threads
    return fig


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _draw_spectrogram(ax, spectrogram: np.ndarray, sample_rate: int, hop_length: int, kind: str) -> Any:
    seconds = spectrogram.shape[1] * hop_length / sample_rate
    image = ax.imshow(
        spectrogram, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
        extent=(0.0, seconds, -0.5, spectrogram.shape[0] - 0.5),
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel(_FREQUENCY_AXIS.get(kind, "frequency"))
    return image


def spectrogram_figure(
    spectrogram: np.ndarray, sample_rate: int, hop_length: int, kind: str = "mel", title: str = ""
) -> Figure:
    """One spectrogram [F, frames] in dB with a colour bar."""
    fig = _figure(8, 3.2)
    ax = fig.add_subplot()
    image = _draw_spectrogram(ax, spectrogram, sample_rate, hop_length, kind)
    fig.colorbar(image, ax=ax, label=_VALUE_LABEL.get(kind, "dB"))
    ax.set_title(title or f"log-{kind} spectrogram")
    return fig


# --------------------------------------------------------------------------
# Per-class grids


def pick_examples(targets: torch.Tensor, class_names: Sequence[str], max_classes: int, per_class: int,
                  seed: int = 0) -> list[tuple[int, list[int]]]:
    """``(class, clip rows)`` for up to ``max_classes`` evenly spread classes, ``per_class`` random clips each."""
    present = sorted(set(targets.tolist()))
    if len(present) > max_classes:
        spread = np.linspace(0, len(present) - 1, max_classes).round().astype(int)
        present = [present[i] for i in spread]
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in present:
        rows = torch.nonzero(targets == c).flatten()
        chosen = rows[torch.randperm(len(rows), generator=generator)[:per_class]].sort().values
        picks.append((c, chosen.tolist()))
    return picks


def waveform_grid_figure(waveforms: torch.Tensor, sample_rate: int, picks, class_names, clip_ids) -> Figure:
    cols = max(len(rows) for _, rows in picks)
    fig = _figure(3.2 * cols, 1.6 * len(picks) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(picks), cols, squeeze=False, sharex=True, sharey=True))
    time = np.arange(waveforms.shape[1]) / sample_rate
    for r, (c, rows) in enumerate(picks):
        for k in range(cols):
            ax = axes[r, k]
            if k >= len(rows):
                ax.axis("off")
                continue
            ax.plot(time, waveforms[rows[k]].numpy(), linewidth=0.4, color="tab:blue")
            ax.set_title(f"{class_names[c]}: {clip_ids[rows[k]]}", fontsize=7)
            ax.set_ylim(-1.05, 1.05)
            ax.grid(alpha=0.3)
        axes[r, 0].set_ylabel("amplitude", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)", fontsize=8)
    fig.suptitle("Waveforms per class")
    return fig


def spectrogram_grid_figure(spectrograms: torch.Tensor, sample_rate: int, hop_length: int, kind: str,
                            picks, class_names, clip_ids, row_of: dict[int, int]) -> Figure:
    cols = max(len(rows) for _, rows in picks)
    fig = _figure(3.2 * cols, 1.8 * len(picks) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(picks), cols, squeeze=False))
    low, high = float(spectrograms.min()), float(spectrograms.max())
    image = None
    for r, (c, rows) in enumerate(picks):
        for k in range(cols):
            ax = axes[r, k]
            if k >= len(rows):
                ax.axis("off")
                continue
            image = _draw_spectrogram(ax, spectrograms[row_of[rows[k]], 0].numpy(), sample_rate, hop_length, kind)
            image.set_clim(low, high)  # one colour scale for the grid: loudness is comparable
            ax.set_title(f"{class_names[c]}: {clip_ids[rows[k]]}", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.xaxis.label.set_fontsize(7)
            ax.yaxis.label.set_fontsize(7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label=_VALUE_LABEL.get(kind, "dB"))
    fig.suptitle(f"Log-{kind} spectrograms per class")
    return fig


def sample_predictions_figure(spectrograms: torch.Tensor, probabilities: torch.Tensor, true: Sequence[int],
                              class_names: Sequence[str], titles: Sequence[str], sample_rate: int,
                              hop_length: int, kind: str, top_k: int = 5, note: str = "") -> Figure:
    """One row per clip: its spectrogram, and bars of the top-k probabilities (true class in green)."""
    n = len(true)
    fig = _figure(10, 1.9 * n + 0.6)
    axes = np.atleast_2d(fig.subplots(n, 2, squeeze=False, width_ratios=[1.6, 1]))
    k = min(top_k, probabilities.shape[1])
    for i in range(n):
        _draw_spectrogram(axes[i, 0], spectrograms[i, 0].numpy(), sample_rate, hop_length, kind)
        axes[i, 0].set_title(titles[i], fontsize=8)
        values, indices = torch.topk(probabilities[i], k)
        labels = [class_names[j] for j in indices.tolist()]
        colors = ["tab:green" if j == true[i] else "tab:gray" for j in indices.tolist()]
        bars = axes[i, 1]
        bars.barh(range(k)[::-1], values.numpy(), color=colors)
        bars.set_yticks(range(k)[::-1], labels=labels, fontsize=8)
        bars.set_xlim(0, 1)
        predicted = class_names[int(indices[0])]
        verdict = "correct" if int(indices[0]) == true[i] else "wrong"
        bars.set_title(f"true: {class_names[true[i]]}, predicted: {predicted} ({verdict})", fontsize=8)
        bars.grid(axis="x", alpha=0.3)
    axes[-1, 1].set_xlabel("probability")
    fig.suptitle("Sample predictions (green: true class)" + (f"\n{note}" if note else ""))
    return fig


# --------------------------------------------------------------------------
# Making all plots
