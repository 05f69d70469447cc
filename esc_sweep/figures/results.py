"""Matplotlib figures of cross-validation results.

Every function returns a ``matplotlib.figure.Figure`` drawn with the Agg
(file-only) backend, never through pyplot: no window opens, nothing is kept in
pyplot's global figure list (so a long sweep does not leak memory), and it
works in worker threads and on headless machines. Save one with
``fig.savefig("x.png")`` or hand it to ``mlflow.log_figure``.

    from esc_sweep.figures.results import confusion_matrix_figure
    fig = confusion_matrix_figure(cv.pooled_confusion, cv.class_names, "pooled")
    fig.savefig("confusion.png")

Beside the figures, two plain-text views of a confusion matrix (no new
dependency): ``confusion_matrix_html`` (a self-contained HTML table whose cells
name their classes on hover) and ``most_confused_pairs`` (the largest
off-diagonal cells, with ``most_confused_pairs_markdown`` as a table).
"""

from __future__ import annotations

import html
import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

TRAIN_COLOR = "tab:blue"
VAL_COLOR = "tab:orange"
# Printed under every learning-curve figure: the two train curves measure different things.
LEARNING_CURVE_CAPTION = (
    "train loss: mean over the epoch's augmented training batches (what was optimised); "
    "train accuracy: the training clips re-evaluated clean (eval mode, no augmentation), "
    "so it compares with validation accuracy"
)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # attach the Agg canvas: savefig renders without pyplot
    return fig


def normalize_rows(confusion) -> np.ndarray:
    """Each row (true class) divided by its total; empty rows stay 0."""
    matrix = np.asarray(confusion, dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def _counts(confusion, class_names: Sequence[str]) -> np.ndarray:
    counts = np.asarray(confusion.tolist() if hasattr(confusion, "tolist") else confusion, dtype=float)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion is {counts.shape}, expected ({n}, {n})")
    return counts


def confusion_matrix_figure(
    confusion, class_names: Sequence[str], title: str = "Confusion matrix", normalize: bool = True
) -> Figure:
    """Confusion matrix as a heat map; rows are true classes, columns predictions.

    ``confusion`` is a square matrix of counts (nested lists, numpy array or
    tensor). With ``normalize`` each row is divided by its total, so the
    diagonal reads as per-class recall whatever the class sizes. The figure
    grows with the number of classes so 50 class names stay readable (0.36 in,
    36 px at the logged 100 dpi, per class); cells are annotated with their
    value up to 20 classes, and above that every non-empty cell with its clip
    count, on a thin grid, so a 50-class matrix shows where the mistakes are.
    """
    counts = _counts(confusion, class_names)
    n = counts.shape[0]
    values = normalize_rows(counts) if normalize else counts
    accuracy = np.trace(counts) / max(counts.sum(), 1)

    size = max(5.0, 0.36 * n + 3.0)
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "clips")

    fontsize = 10 if n <= 10 else 9 if n <= 25 else 8
    ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title} (accuracy {accuracy:.1%})")
    threshold = values.max() / 2 if values.size else 0
    if n <= 20:
        for (row, col), value in np.ndenumerate(values):
            if counts[row, col] == 0:
                continue
            text = f"{value:.2f}" if normalize else f"{int(value)}"
            ax.text(col, row, text, ha="center", va="center", fontsize=fontsize - 1,
                    color="white" if value > threshold else "black")
    else:
        # Cell borders and the clip count of every non-empty cell: one stray prediction stays visible.
        ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="0.85", linewidth=0.4)
        ax.tick_params(which="minor", length=0)
        for (row, col), count in np.ndenumerate(counts):
            if count:
                ax.text(col, row, f"{int(count)}", ha="center", va="center", fontsize=6,
                        color="white" if values[row, col] > threshold else "black")
    return fig


def confusion_matrix_html(confusion, class_names: Sequence[str], title: str = "Confusion matrix") -> str:
    """A self-contained HTML page with the confusion matrix as a table (no script, no external file).

    Rows are true classes, columns predictions; each cell shows its clip count,
    is shaded by the fraction of its true class, and names both classes on
    hover (``title``), so a 50-class matrix can be read cell by cell in a browser
    or in the MLflow artifact viewer. Row headers carry the class's accuracy.
    """
    counts = _counts(confusion, class_names)
    fractions = normalize_rows(counts)
    totals = counts.sum(axis=1)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    esc = [html.escape(str(name)) for name in class_names]
    rows = []
    header = "".join(f'<th class="col" title="predicted {name}"><div>{name}</div></th>' for name in esc)
    rows.append(f'<tr><th class="corner">true \\ predicted</th>{header}</tr>')
    for i, name in enumerate(esc):
        cells = []
        for j in range(len(esc)):
            count, share = int(counts[i, j]), fractions[i, j]
            tip = f"true {esc[i]}, predicted {esc[j]}: {count} of {int(totals[i])} clips ({share:.1%})"
            shade = f"rgba(31,119,180,{share:.3f})"
            style = f"background:{shade};" + ("color:white;" if share > 0.5 else "")
            kind = "diag" if i == j else ("miss" if count else "zero")
            cells.append(f'<td class="{kind}" style="{style}" title="{tip}">{count or ""}</td>')
        recall = fractions[i, i]
        rows.append(f'<tr><th class="row" title="{name}: {recall:.1%} of {int(totals[i])} clips right">'
                    f'{name} <span>{recall:.0%}</span></th>{"".join(cells)}</tr>')
    heading = html.escape(f"{title} (accuracy {accuracy:.1%}, {int(counts.sum())} clips)")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{heading}</title>
<style>
body {{ font-family: sans-serif; font-size: 12px; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ddd; padding: 0; }}
td {{ width: 22px; height: 22px; min-width: 22px; text-align: center; font-size: 11px; }}
td.diag {{ outline: 1px solid #555; outline-offset: -1px; font-weight: bold; }}
td:hover, th:hover {{ outline: 2px solid #d62728; outline-offset: -2px; }}
th.row {{ text-align: right; padding: 0 6px; white-space: nowrap; font-weight: normal; }}
th.row span {{ color: #666; }}
th.col {{ height: 130px; vertical-align: bottom; font-weight: normal; }}
th.col div {{ writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; padding: 4px 0; }}
</style></head>
<body><h3>{heading}</h3>
<p>Rows: true class (its accuracy after the name); columns: predicted class. Cells: clips, shaded by
the fraction of the true class; hover a cell for its classes and share.</p>
<table>
{chr(10).join(rows)}
</table></body></html>
"""


def most_confused_pairs(confusion, class_names: Sequence[str], top: int = 20) -> list[dict]:
    """The ``top`` largest off-diagonal cells: which true class was taken for which, how often.

    Each pair is ``{"true": ..., "predicted": ..., "count": clips, "share_of_true":
    count / clips of the true class}``, most clips first (ties: larger share,
    then names). Empty cells are left out, so there may be fewer than ``top``.
    """
    counts = _counts(confusion, class_names)
    totals = counts.sum(axis=1)
    pairs = [
        {"true": str(class_names[i]), "predicted": str(class_names[j]), "count": int(counts[i, j]),
         "share_of_true": float(counts[i, j] / totals[i]) if totals[i] else 0.0}
        for (i, j), count in np.ndenumerate(counts) if i != j and count > 0
    ]
    pairs.sort(key=lambda p: (-p["count"], -p["share_of_true"], p["true"], p["predicted"]))
    return pairs[:top]


def most_confused_pairs_markdown(pairs: Sequence[Mapping]) -> str:
    """``most_confused_pairs`` as a Markdown table (readable as plain text too)."""
    lines = ["| # | true class | predicted as | clips | share of true class |", "|---|---|---|---|---|"]
    lines += [f"| {rank} | {p['true']} | {p['predicted']} | {p['count']} | {p['share_of_true']:.1%} |"
              for rank, p in enumerate(pairs, 1)]
    if not pairs:
        lines.append("| - | (no confusions) | | | |")
    return "\n".join(lines) + "\n"


def _series(history: Sequence[Mapping[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of ``key``, skipping epochs that did not measure it."""
    points = [(h["epoch"], h[key]) for h in history if key in h and h[key] is not None]
    points = [(e, v) for e, v in points if math.isfinite(v)]
    if not points:
        return np.array([]), np.array([])
    epochs, values = zip(*points)
    return np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)


def _mean_curve(histories: Sequence[Sequence[Mapping[str, float]]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over folds per epoch (a fold that stopped early no longer counts)."""
    by_epoch: dict[float, list[float]] = {}
    for history in histories:
        for epoch, value in zip(*_series(history, key)):
            by_epoch.setdefault(epoch, []).append(value)
    epochs = np.array(sorted(by_epoch))
    return epochs, np.array([np.mean(by_epoch[e]) for e in epochs])


def learning_curve_figure(history_per_fold: Mapping[int, Sequence[Mapping[str, float]]]) -> Figure:
    """Train/validation accuracy and loss per epoch; the overfitting gap shaded.

    ``history_per_fold`` maps a fold number to its per-epoch records
    (``FoldResult.history``: dicts with epoch, train_acc, val_acc, train_loss,
    val_loss, ...). With one fold its curves are drawn; with several, each
    fold is drawn faintly and the mean over folds boldly. Train and
    validation accuracy share the left chart, the area between them (the gap)
    shaded; the losses share the right one. The caption under the charts
    (``LEARNING_CURVE_CAPTION``) says what the train curves measure: the loss
    on augmented batches, the accuracy on clean training clips.
    """
    folds = sorted(history_per_fold)
    histories = [history_per_fold[f] for f in folds]
    fig = _new_figure(11, 4.2)
    acc_ax, loss_ax = fig.subplots(1, 2)
    several = len(histories) > 1

    for ax, (train_key, val_key), ylabel in (
        (acc_ax, ("train_acc", "val_acc"), "accuracy"),
        (loss_ax, ("train_loss", "val_loss"), "loss"),
    ):
        if several:
            for history in histories:
                for key, color in ((train_key, TRAIN_COLOR), (val_key, VAL_COLOR)):
                    ax.plot(*_series(history, key), color=color, alpha=0.25, linewidth=1)
        prefix = "mean " if several else ""
        train_x, train_y = _mean_curve(histories, train_key)
        val_x, val_y = _mean_curve(histories, val_key)
        ax.plot(train_x, train_y, color=TRAIN_COLOR, linewidth=2, marker=".", label=f"{prefix}train")
        ax.plot(val_x, val_y, color=VAL_COLOR, linewidth=2, marker=".", label=f"{prefix}validation")
        if ax is acc_ax:
            # Shade the gap on epochs where both accuracies were measured.
            common, train_i, val_i = np.intersect1d(train_x, val_x, return_indices=True)
            if len(common):
                ax.fill_between(common, train_y[train_i], val_y[val_i], color="tab:red", alpha=0.15,
                                label="gap (train - val)")
                final_gap = train_y[train_i][-1] - val_y[val_i][-1]
                ax.set_title(f"accuracy (final gap {final_gap:+.1%})")
            else:
                ax.set_title("accuracy")
            ax.set_ylim(-0.02, 1.02)
        else:
            ax.set_title("loss")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    label = f"fold {folds[0]}" if len(folds) == 1 else f"{len(folds)} folds ({', '.join(map(str, folds))})"
    fig.suptitle(f"Learning curves, {label}")
    fig.supxlabel(LEARNING_CURVE_CAPTION, fontsize=8, color="0.35", wrap=True)
    return fig


def per_class_accuracy_figure(per_class: Mapping[str, float], title: str = "Per-class accuracy") -> Figure:
    """Horizontal bars of each class's accuracy, worst class at the top.

    ``per_class`` maps class name to accuracy in [0, 1] (e.g.
    ``CVResult.per_class_accuracy()``). The dashed line is the mean over classes.
    """
    items = sorted(per_class.items(), key=lambda kv: (kv[1], kv[0]))
    names = [name for name, _ in items]
    values = np.array([value for _, value in items], dtype=float)
    fig = _new_figure(7, max(3.0, 0.22 * len(items) + 1.5))
    ax = fig.add_subplot()
    ax.barh(range(len(items)), values, color=VAL_COLOR)
    ax.set_yticks(range(len(items)), labels=names, fontsize=9 if len(items) <= 25 else 7)
    ax.set_ylim(len(items) - 0.4, -0.6)  # inverted: the worst class on top
    if len(items):
        ax.axvline(values.mean(), color="black", linestyle="--", linewidth=1, label=f"mean {values.mean():.1%}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return fig
