"""esc_sweep's Optuna sweeper for Hydra (``hydra/sweeper=esc_optuna``).

It extends hydra-optuna-sweeper with pruning, resumable studies whose
``n_trials`` is a total, failure bookkeeping, several cooperating workers on
one study, and a study report logged to MLflow. See docs/sweeps.md.
"""
