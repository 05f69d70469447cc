"""Config schema of the ``esc_optuna`` sweeper: the Optuna plugin's, plus pruning.

Registered as ``hydra/sweeper: esc_optuna``. Everything the Optuna plugin
accepts (``sampler``, ``direction``, ``storage``, ``study_name``, ``n_trials``,
``n_jobs``, ``max_failure_rate``, ``params`` with ``interval``/``choice``/
``range``/``tag(log, ...)``, ``custom_search_space``) is accepted here. With
``compat`` on (the default for apps without esc_sweep's ``sweep`` node) it
also means the same; with it off (the default for esc_sweep) ``n_trials`` is
the total number of finished trials the study should hold and
``max_failure_rate`` bounds the failures of one sweep command. See
docs/sweeps.md, "esc_optuna and the Optuna plugin".
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

    # null (auto): true when the app's config has no `sweep` node (any Hydra app but
    # esc_sweep), false for esc_sweep. true: the Optuna plugin's semantics (n_trials per
    # command, failed trials included; max_failure_rate per batch; one random stream;
    # in-memory study by default). false: esc_sweep's (n_trials as the study's total of
    # finished trials; failed trials replaced; randomness from seed and trial number).
    compat: Optional[bool] = None

    # sqlite:///<file>.db, postgresql://user@host/db, journal:///<abs path>.log
    # (journal://<relative path>). Default: with compat, in memory (the Optuna plugin's);
    # else sqlite:///<original cwd>/outputs/optuna/<study_name>.db.
    storage: Optional[str] = None
    # Default: with compat, a fresh name from Optuna; else <hparams_search or config
    # name>-<hash of the search space>, so two different searches never share a study.
    study_name: Optional[str] = None
    # Trials launched at a time. Default: 2 with compat (the Optuna plugin's), else 1:
    # the sampler sees every result before it proposes the next trial. Run several
    # commands to parallelise.
    n_jobs: Optional[int] = None
    # Failed trials (errors, NaN loss, out of memory) this command may see before it gives
    # up. With compat: a fraction of each batch (default 0.0, the Optuna plugin's); else
    # a fraction of n_trials (default 0.25). 1.0: failures never stop the sweep.
    max_failure_rate: Optional[float] = None
    # Names of the objectives, one per direction, shown by optuna-dashboard and the report. Default
    # for esc_sweep: [<its objective>, *extra_objectives], the objective named by trainer.validation
    # (mean_val_acc: the test folds'; mean_inner_acc: the inner split's); for other apps none.
    objective_names: List[str] = field(default_factory=list)
    # The study report at the end: full (table, best trial, optimization_results.yaml,
    # trials.csv, fANOVA importances, figures) or summary (no importances or figures,
    # whose imports take seconds). Default: summary with compat, else full.
    report: Optional[str] = None
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
    # Liveness: a RUNNING trial without a heartbeat for grace_period seconds belonged to
    # a killed worker and is marked FAIL (and, with esc_sweep's semantics, replaced).
    # RDB storages use Optuna's heartbeat table; journal files a trial system attribute.
    # 0 is refused for a saved study (a killed worker's trial would stay RUNNING forever);
    # grace_period must exceed heartbeat_interval.
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
