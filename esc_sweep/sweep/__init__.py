"""Optuna, both sides of a trial.

The sweeper's side: sweeper (the sweep loop; the plugin in hydra_plugins/ is a thin shim),
accounting (which trials count towards n_trials, failures), identity (which study a search
goes into: its recorded search, settings and objective name), storage (URLs, locks,
heartbeats), report (the study summary), messages (its error type and override quoting),
optuna_private (every private Optuna / plugin API, in one place), search_spaces. The trial's
side: reporter (reports folds, raises when pruned)."""
