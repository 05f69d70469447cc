"""esc_sweep: cross-validated experiment sweeps for environmental sound classification."""

__version__ = "0.2.0"
