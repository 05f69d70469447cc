"""The Hydra plugin class. Hydra imports this module while scanning for
plugins on every run, so the heavy lifting (optuna, mlflow) lives in
``esc_sweep.sweep.sweeper`` and is imported only when a sweep starts."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig

from . import config as config  # registers hydra/sweeper: esc_optuna


class EscOptunaSweeper(Sweeper):
    """Same constructor as the Optuna plugin's sweeper, plus our extra fields."""

    def __init__(self, sampler: Any, pruner: DictConfig, **kwargs: Any) -> None:
        from esc_sweep.sweep.sweeper import EscOptunaSweeperImpl

        sampler_seed = sampler.get("seed") if isinstance(sampler, DictConfig) else None
        sampler = instantiate(
            sampler,
            _execution_whitelist_=("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*"),
        )
        self.sweeper = EscOptunaSweeperImpl(sampler=sampler, sampler_seed=sampler_seed, pruner=pruner, **kwargs)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
