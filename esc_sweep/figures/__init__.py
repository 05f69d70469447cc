"""Matplotlib (Agg) figures: results (confusion matrices, curves), audio (waveforms, spectrograms)."""
