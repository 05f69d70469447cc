"""Optuna, both sides of a trial: sweeper (the Hydra sweeper's implementation; the
plugin in hydra_plugins/ is a thin shim), reporter (the trial side: reports folds,
raises when pruned), storage, search_spaces, report (the study summary)."""
