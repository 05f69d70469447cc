"""A recording's spectrogram above its per-window predictions over time (``esc-sweep serve``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from esc_sweep.figures.audio import _draw_spectrogram, _figure


def classes_to_show(window_probabilities: torch.Tensor, max_classes: int) -> list[int]:
    """Classes worth a row: every window's winner first (by mean probability), then the most likely on average."""
    mean = window_probabilities.double().mean(0)
    winners = sorted(set(window_probabilities.argmax(1).tolist()), key=lambda c: -float(mean[c]))
    rest = [c for c in torch.argsort(mean, descending=True).tolist() if c not in winners]
    return (winners + rest)[: max(1, max_classes)]


def window_predictions_figure(
    spectrogram: np.ndarray,
    sample_rate: int,
    hop_length: int,
    kind: str,
    window_probabilities: torch.Tensor,
    window_seconds: float,
    class_names: Sequence[str],
    max_classes: int = 6,
    title: str = "",
    spectrogram_is_whole: bool = True,
) -> Figure:
    """Top: the spectrogram [F, frames] in dB. Bottom: each clip-length window's probability of the
    classes that matter (heat map, one column per window), so a long recording shows what happens when.

    The spectrogram may cover only the start of the recording (a 10-minute picture is unreadable);
    when it covers all of it (``spectrogram_is_whole``), both panels share the time axis.
    """
    windows = window_probabilities.shape[0]
    total_seconds = windows * window_seconds
    shown = classes_to_show(window_probabilities, max_classes)
    fig = _figure(8, 2.6 + 0.28 * len(shown))
    top, bottom = fig.subplots(2, 1, height_ratios=[2.2, 0.5 + 0.28 * len(shown)])
    picture = _draw_spectrogram(top, spectrogram, sample_rate, hop_length, kind)
    fig.colorbar(picture, ax=top, label="dB" if kind != "mfcc" else "", fraction=0.05)
    top.set_title(title or f"log-{kind} spectrogram", fontsize=9)
    heat = window_probabilities[:, shown].T.float().numpy()  # [classes, windows]
    image = bottom.imshow(heat, aspect="auto", origin="upper", cmap="Greens", vmin=0.0, vmax=1.0,
                          interpolation="nearest", extent=(0.0, total_seconds, len(shown) - 0.5, -0.5))
    bottom.set_yticks(range(len(shown)), labels=[class_names[c] for c in shown], fontsize=7)
    bottom.set_xlabel("time (s)")
    bottom.set_title(f"probability per {window_seconds:g} s window ({windows} window{'s' * (windows != 1)})",
                     fontsize=9)
    if windows <= 40:  # the numbers themselves while they fit
        for row in range(heat.shape[0]):
            for column in range(windows):
                value = heat[row, column]
                bottom.text((column + 0.5) * window_seconds, row, f"{value:.2f}", ha="center", va="center",
                            fontsize=6, color="white" if value > 0.6 else "black")
    fig.colorbar(image, ax=bottom, label="p", fraction=0.05)
    if spectrogram_is_whole:  # the last window is padded past the end: the same axis for both
        top.set_xlim(0.0, total_seconds)
        bottom.set_xlim(0.0, total_seconds)
    return fig
