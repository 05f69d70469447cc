"""Config schema of the ``esc_optuna`` sweeper: the Optuna plugin's, plus pruning.

Registered as ``hydra/sweeper: esc_optuna``. Everything the Optuna plugin
accepts (``sampler``, ``direction``, ``storage``, ``study_name``, ``n_trials``,
``n_jobs``, ``max_failure_rate``, ``params`` with ``interval``/``choice``/
``range``/``tag(log, ...)``, ``custom_search_space``) means the same here,
except that ``n_trials`` is the total number of finished trials the study
should hold, and ``max_failure_rate`` bounds the failures of one sweep command
rather than of one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf


@dataclass
class PrunerConf:
    """Which Optuna pruner stops unpromising trials early.

    Steps are folds: a trial reports its running mean validation accuracy
    after each fold (step 1, 2, ...). With ``report_epochs`` it also reports
    each epoch of its first fold, at steps 1..999, and fold k then ends at
    step 1000*k.
    """

    # median | successive_halving | hyperband | none
    name: str = "median"
    # median: trials that must COMPLETE before any is pruned, and steps to
    # wait inside each trial before it may be pruned.
    n_startup_trials: int = 3
    n_warmup_steps: int = 0
    # successive_halving / hyperband: the resource is the step (see above).
    # "auto" lets Optuna estimate it from the first finished trials.
    min_resource: Any = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class EscOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.esc_sweep_sweeper.sweeper.EscOptunaSweeper"

    # Default: sqlite:///<original cwd>/outputs/optuna/<study_name>.db
    storage: Optional[str] = None
    # Default: the hparams_search name, else "esc_sweep".
    study_name: Optional[str] = None
    # One trial at a time per sweep command: the sampler sees every result
    # before it proposes the next trial. Run several commands to parallelise.
    n_jobs: int = 1
    # Failed trials (errors, NaN loss, out of memory) this command may see,
    # as a fraction of n_trials, before it gives up.
    max_failure_rate: float = 0.25
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # Report every epoch of the first fold too, so a diverging trial is
    # stopped before its first fold ends.
    report_epochs: bool = False
    # Extra objectives read from the trial's user attributes (set by the
    # trainer), after the returned accuracy: e.g. [num_parameters] with
    # direction [maximize, minimize].
    extra_objectives: List[str] = field(default_factory=list)
    # With a parallel launcher (joblib) and n_jobs > 1: the i-th job of each
    # batch trains on devices[i % len(devices)], e.g. [cuda:0, cuda:1, cuda:2, cuda:3].
    devices: List[str] = field(default_factory=list)
    # Liveness of RDB trials: a RUNNING trial without a heartbeat for
    # grace_period seconds belonged to a killed worker and is marked FAIL.
    # 0 disables heartbeats.
    heartbeat_interval: int = 30
    grace_period: int = 120
    # How often a worker with nothing left to ask checks whether the trials
    # of other workers finished (or failed and need a replacement).
    poll_seconds: float = 2.0


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="esc_optuna",
    node=EscOptunaSweeperConf,
    provider="esc_sweep",
)
