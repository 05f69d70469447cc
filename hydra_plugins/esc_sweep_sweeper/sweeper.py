"""The Hydra plugin class. Hydra imports this module while scanning for
plugins on every run, so the heavy lifting (optuna, mlflow) lives in
``esc_sweep.sweep.sweeper`` and is imported only when a sweep starts.

A user error of the sweeper (an ``EscSweepError``: a bad setting, a misspelt
parameter, an unusable storage, a study made for another search, too many
failed trials) is printed on one line, ``error: <what to fix>``, and the
command exits with status 2, instead of Hydra's traceback and status 1.
``HYDRA_FULL_ERROR=1`` keeps the traceback.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, TypeVar

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig

from . import config as config  # registers hydra/sweeper: esc_optuna

F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(method: F) -> F:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from esc_sweep.errors import EscSweepError

        try:
            return method(*args, **kwargs)
        except EscSweepError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            from rich.markup import escape

            from esc_sweep.console import console

            console.print(f"[bold red]error:[/] {escape(str(err))}")
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


class EscOptunaSweeper(Sweeper):
    """Same constructor as the Optuna plugin's sweeper, plus our extra fields."""

    @_one_line_errors
    def __init__(self, sampler: Any, pruner: DictConfig, **kwargs: Any) -> None:
        # deferred: esc_sweep's sweeper imports Optuna (~0.8 s); Hydra imports this plugin for every command
        from esc_sweep.sweep.messages import SweepError, one_line
        from esc_sweep.sweep.sweeper import EscOptunaSweeperImpl

        sampler_seed = sampler.get("seed") if isinstance(sampler, DictConfig) else None
        try:
            sampler = instantiate(
                sampler,
                _execution_whitelist_=("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*"),
            )
        except Exception as err:  # e.g. a sampler removed from Optuna (motpe), a bad sampler argument
            raise SweepError(f"hydra.sweeper.sampler: {one_line(err)}") from err
        self.sweeper = EscOptunaSweeperImpl(sampler=sampler, sampler_seed=sampler_seed, pruner=pruner, **kwargs)

    @_one_line_errors
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    @_one_line_errors
    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
