"""Every private API of Optuna, hydra-optuna-sweeper and Hydra's job result that esc_sweep uses, in one place.

Written against optuna 5.0.0, hydra-optuna-sweeper 1.4.0rc3 and hydra-core 1.4.0rc3. After an
upgrade of any of them, this is the one module to check: ``tests/sweep`` (Hydra's own Optuna
sweeper suite included) exercises each use, and ``tests/sweep/test_optuna_private.py`` fails
when a private name of those packages is used anywhere else in esc_sweep.

Why each one is needed (no public API does it):

* ``Study._storage`` (``storage_of``): one trial's current state and user attributes by id,
  and setting those of another worker's trial. ``Study.get_trials`` copies the whole study
  and a ``FrozenTrial`` is a snapshot; a stale trial has no ``Trial`` object here at all.
* ``Trial._trial_id`` (``trial_id``): the storage's key of a trial, which the storage methods
  and heartbeats take; a ``Trial``/``FrozenTrial`` exposes only its number.
* ``Study._study_id`` (``study_id``): the storage's key of a study, for
  ``get_trial_id_from_study_id_trial_number`` (a job finds its trial by number) and the stale
  trials of that study.
* ``RDBStorage._get_stale_trial_ids`` (``rdb_stale_trial_ids``): the RUNNING trials whose
  heartbeat stopped, by the database's clock. Optuna's public ``fail_stale_trials`` fails
  them itself, and a finished trial is read-only: the failure reason could not be recorded.
* ``optuna.samplers._lazy_random_state.LazyRandomState`` (``reseed_sampler``): where samplers
  keep their random generator. Samplers have no public way to reseed after construction;
  esc_sweep seeds them per trial number so resumed sweeps and parallel workers draw distinct,
  reproducible trials.
* ``hydra_plugins.hydra_optuna_sweeper._impl`` (``OptunaSweeperImpl``,
  ``create_params_from_overrides`` and the private methods wrapped below): esc_sweep's sweeper
  extends the plugin's, so that its search-space syntax, directions and the trials it
  samples in compat mode are exactly the plugin's. The module and those methods are private.
* ``JobReturn._return_value`` (``job_error``): a failed job's exception. The public
  ``JobReturn.return_value`` raises it instead of returning it.
"""

from __future__ import annotations

from typing import Any

import optuna
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from optuna.samplers._lazy_random_state import LazyRandomState

__all__ = [
    "OptunaSweeperImpl", "storage_of", "trial_id", "study_id", "rdb_stale_trial_ids", "reseed_sampler",
    "job_error", "plugin_search_space", "plugin_directions", "plugin_trial_overrides", "grid_choices",
]


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage object ``study`` reads and writes through."""
    return study._storage


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of ``trial`` (not its number)."""
    return trial._trial_id


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study``."""
    return study._study_id


def rdb_stale_trial_ids(storage: optuna.storages.RDBStorage, study: optuna.Study) -> list[int]:
    """Ids of the RUNNING trials of ``study`` whose heartbeat is older than the storage's grace period."""
    return list(storage._get_stale_trial_ids(study._study_id))


def reseed_sampler(sampler: Any, seed: int, depth: int) -> None:
    """Seed every LazyRandomState held by ``sampler`` and its inner samplers (down to ``depth`` levels)."""
    for index, value in enumerate(vars(sampler).values()):
        if isinstance(value, LazyRandomState):
            value.rng.seed((seed + index) % 2**32)
        elif depth > 0 and isinstance(value, optuna.samplers.BaseSampler):
            reseed_sampler(value, (seed * 31 + index) % 2**32, depth - 1)


def job_error(ret: JobReturn) -> Any:
    """The exception a failed job raised (``ret.return_value`` would raise it)."""
    return ret._return_value


def plugin_search_space(impl: OptunaSweeperImpl, arguments: list[str]) -> tuple[dict, dict, list[str]]:
    """The plugin's reading of ``hydra.sweeper.params`` plus the command line's sweep overrides:
    (distributions, fixed parameters, fixed overrides). Raises what Optuna raises for a bad expression."""
    impl._process_searchspace_config()
    params_conf = impl._parse_sweeper_params_config() + list(arguments)
    return create_params_from_overrides(params_conf)


def plugin_directions(impl: OptunaSweeperImpl) -> list[str]:
    """``hydra.sweeper.direction`` as a list of direction names, as the plugin reads it."""
    return impl._get_directions()


def plugin_trial_overrides(
    impl: OptunaSweeperImpl, trial: optuna.Trial, distributions: dict, fixed_params: dict, fixed_overrides: list[str]
) -> list[str]:
    """The plugin's overrides for ``trial``: it suggests every parameter (custom search space included)."""
    (overrides,) = impl._configure_trials([trial], distributions, fixed_params, fixed_overrides)
    return list(overrides)


def grid_choices(distribution: optuna.distributions.BaseDistribution) -> Any:
    """The values of a discrete distribution, as the plugin hands them to the grid sampler."""
    return OptunaSweeperImpl._to_grid_sampler_choices(distribution)
