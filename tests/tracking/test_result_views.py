"""Confusion matrix views (large figure, HTML table, most confused pairs) and the learning-curve caption."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest

from esc_sweep.figures import results as figures
from esc_sweep.tracking.client import display_value

NAMES = [f"class_{i:02d}" for i in range(50)]


def _counts() -> np.ndarray:
    counts = np.eye(50, dtype=int) * 30
    counts[3, 7] = 9  # the most confused pair
    counts[7, 3] = 4
    counts[10, 11] = 4
    counts[12, 13] = 2
    return counts


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells: list[dict] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "td":
            self.cells.append({**dict(attrs), "text": ""})
            self._in_cell = True

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.cells[-1]["text"] += data


def test_confusion_html_is_a_self_contained_table_with_hover_titles():
    page = figures.confusion_matrix_html(_counts(), NAMES, "pooled")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    parser = _Cells()
    parser.feed(page)
    assert len(parser.cells) == 50 * 50
    cell = parser.cells[3 * 50 + 7]  # row 3 (true), column 7 (predicted)
    assert cell["text"] == "9"
    assert cell["title"] == "true class_03, predicted class_07: 9 of 39 clips (23.1%)"
    assert parser.cells[0]["text"] == "30" and parser.cells[0]["class"] == "diag"
    assert parser.cells[1]["text"] == "" and parser.cells[1]["class"] == "zero"
    for name in NAMES:
        assert f">{name} <span>" in page  # row headers with the class's accuracy
    assert "(accuracy" in page


def test_confusion_html_escapes_class_names():
    page = figures.confusion_matrix_html([[1, 0], [0, 1]], ["<b>dog</b>", 'say "hi"'])
    assert "<b>dog</b>" not in page and "&lt;b&gt;dog&lt;/b&gt;" in page and "&quot;hi&quot;" in page


def test_most_confused_pairs_are_the_largest_off_diagonal_cells():
    pairs = figures.most_confused_pairs(_counts(), NAMES, top=3)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("class_03", "class_07", 9), ("class_07", "class_03", 4), ("class_10", "class_11", 4)]
    assert pairs[0]["share_of_true"] == pytest.approx(9 / 39)
    assert len(figures.most_confused_pairs(_counts(), NAMES)) == 4  # only non-empty cells, at most 20
    table = figures.most_confused_pairs_markdown(pairs)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| # | true class | predicted as | clips |") and len(lines) == 2 + 3
    assert lines[2] == "| 1 | class_03 | class_07 | 9 | 23.1% |"
    assert "no confusions" in figures.most_confused_pairs_markdown([])


def test_fifty_class_confusion_figure_is_large_with_counts_in_cells():
    fig = figures.confusion_matrix_figure(_counts(), NAMES, "pooled")
    width, height = fig.get_size_inches() * fig.dpi
    assert width / 50 >= 30 and height / 50 >= 30  # at least 30 px per class at the logged dpi
    ax = fig.axes[0]
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in ax.texts}
    assert texts[(7, 3)] == "9" and texts[(3, 3)] == "30" and (8, 3) not in texts  # empty cells stay blank


def test_learning_curve_caption_says_what_the_train_curves_measure():
    history = [{"epoch": e, "train_acc": 0.6, "val_acc": 0.5, "train_loss": 1.0, "val_loss": 1.2} for e in (1, 2)]
    fig = figures.learning_curve_figure({1: history})
    acc, loss = fig.axes
    labels = {line.get_label() for line in acc.get_lines()}
    assert {"train", "validation"} <= labels  # train and val accuracy on one chart
    caption = fig._supxlabel.get_text()
    assert caption == figures.LEARNING_CURVE_CAPTION
    assert re.search(r"train loss: .*augmented", caption) and re.search(r"train accuracy: .*no augmentation", caption)


@pytest.mark.parametrize("value, shown", [(0.7333333333333333, 0.7333333), (2 / 3, 0.6666667), (3e-07, 3e-07),
                                          (1234.56789, 1234.568), (0.0, 0.0), (5, 5.0)])
def test_metric_values_are_rounded_for_display(value, shown):
    assert display_value(value) == shown
    assert display_value(value) == pytest.approx(value, rel=1e-6)  # what comparisons with results.json allow


def test_nan_stays_nan():
    assert np.isnan(display_value(float("nan")))
