"""What users run: train (the Hydra task), progress (a callback), report, predict, serve, plots.

The one place that wires training, tracking, bundles and figures together.
"""
