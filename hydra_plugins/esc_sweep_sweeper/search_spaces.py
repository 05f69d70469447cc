"""Kept so that searches written against the old dotted path still load; the code lives in esc_sweep.sweep."""

from esc_sweep.sweep.search_spaces import model_knobs  # noqa: F401
