"""The esc_optuna sweeper's loop: ask trials, launch their jobs, tell their results.

It reuses the Optuna plugin's search space and samplers (through ``optuna_private``), and
leaves to other modules which study a search goes into (``identity``), which trials count
(``accounting``), the study's storage and heartbeats (``storage``) and the report (``report``).
What it adds to the plugin:

* two sets of semantics (``hydra.sweeper.compat``; see docs/sweeps.md):

  - esc_sweep's (the default when the app's config has a ``sweep`` node, as
    esc_sweep's own has): ``n_trials`` is the total of finished (COMPLETE +
    PRUNED) trials in the study, so a re-run resumes and several workers on
    one storage stop at exactly ``n_trials``; failed trials are replaced while
    failures stay within ``max_failure_rate * n_trials`` (1.0: failures never
    stop the sweep, and then count towards ``n_trials``); the sampler's
    randomness is derived from (seed, trial number);
  - the Optuna plugin's (compat, the default for any other app): ``n_trials``
    trials per command, failed ones included, ``max_failure_rate`` per batch,
    one random stream: the same trials as hydra-optuna-sweeper on the same seed;

* pruning: when the app's config has a ``sweep`` node, each job gets its
  trial's identity and the study storage as ``sweep.*`` overrides; the
  trainer's ``TrialReporter`` reports to the trial and raises
  ``optuna.TrialPruned``, which is told to the study as PRUNED. Other apps get
  no extra keys;
* failures (exceptions, NaN loss, out of memory, a task returning no number)
  told as FAIL with the reason in the trial's ``fail_reason`` user attribute;
* the search space (distributions, directions, objective names) stored with the
  study: a study is only resumed by the same search;
* liveness: heartbeats mark the RUNNING trials of killed workers FAIL;
* a study report at the end (table, best trial, importances, figures on the
  study's MLflow parent run, ``optimization_results.yaml``);
* user errors (a misspelt parameter, a bad setting, an unusable storage) as
  ``SweepError``/``StorageError``; the plugin prints them on one line and exits 2.

How several workers share a study exactly (esc_sweep's semantics): before asking
for a trial a worker counts the trials that are finished or RUNNING (anyone's)
and asks only if that is below ``n_trials``. Two workers can pass that check at
the same moment, so after asking it checks again: trial numbers are handed out
one at a time by the storage, so all trials numbered below ours are visible; if
``n_trials`` of them are finished or running, our trial is surplus and is
closed as FAIL (reason "surplus") without running. A worker with nothing to ask
waits while other workers' trials run, because one of them may fail and need a
replacement; heartbeats let it tell a running trial from one whose worker was
killed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import signal
import sys
import threading
import time
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from esc_sweep.errors import EscSweepError
from esc_sweep.sweep import accounting
from esc_sweep.sweep import identity as _identity
from esc_sweep.sweep import optuna_private as _private
from esc_sweep.sweep import report as _report
from esc_sweep.sweep import storage as _storage
from esc_sweep.sweep.accounting import FINISHED
from esc_sweep.sweep.messages import SweepError, one_line, override_value
from esc_sweep.sweep.reporter import build_pruner

log = logging.getLogger(__name__)

# The keys of esc_sweep's SweepConfig through which a job learns its trial.
IDENTITY_KEYS = ("study_name", "storage", "trial_number")

__all__ = ["EscOptunaSweeperImpl", "SweepError", "has_trial_identity", "IDENTITY_KEYS"]


def has_trial_identity(config: DictConfig) -> bool:
    """Whether the app's config has esc_sweep's ``sweep`` node (SweepConfig) to receive a trial's identity."""
    node = OmegaConf.select(config, "sweep", default=None)
    return isinstance(node, DictConfig) and all(key in node for key in IDENTITY_KEYS)


class EscOptunaSweeperImpl(_private.OptunaSweeperImpl):
    def __init__(
        self,
        *,
        sampler: Any,
        sampler_seed: int | None,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int | None,
        max_failure_rate: float | None,
        custom_search_space: str | None,
        params: DictConfig | None,
        pruner: DictConfig,
        report_epochs: bool,
        extra_objectives: Sequence[str],
        heartbeat_interval: int,
        grace_period: int,
        poll_seconds: float,
        devices: Sequence[str] = (),
        compat: bool | None = None,
        objective_names: Sequence[str] = (),
        report: str | None = None,
    ) -> None:
        if n_trials is None or int(n_trials) < 1:
            raise SweepError(f"hydra.sweeper.n_trials={n_trials}: must be >= 1")
        if n_jobs is not None and int(n_jobs) < 1:
            raise SweepError(f"hydra.sweeper.n_jobs={n_jobs}: must be >= 1")
        if max_failure_rate is not None and not 0.0 <= float(max_failure_rate) <= 1.0:
            raise SweepError(f"hydra.sweeper.max_failure_rate={max_failure_rate}: must be between 0.0 and 1.0")
        if report not in (None, "full", "summary"):
            raise SweepError(f"hydra.sweeper.report={report}: must be full or summary")
        for key, value in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
            if value is not None and int(value) < 0:
                raise SweepError(f"hydra.sweeper.{key}={value}: must be >= 0")
        try:
            super().__init__(sampler, direction, storage, study_name, int(n_trials), n_jobs or 1, 0.0,
                             custom_search_space, params)
        except Exception as err:  # the custom_search_space function cannot be found or is not allowed
            raise SweepError(f"hydra.sweeper.custom_search_space={custom_search_space}: {one_line(err)}") from err
        self.n_jobs = int(n_jobs) if n_jobs is not None else None  # default set in setup(): depends on compat
        self.max_failure_rate = float(max_failure_rate) if max_failure_rate is not None else None
        self.custom_search_space = custom_search_space
        self.sampler_seed = sampler_seed
        self.pruner_spec = OmegaConf.to_container(pruner, resolve=True) if isinstance(pruner, DictConfig) else pruner
        self.pruner = build_pruner(self.pruner_spec)  # fails early on a bad pruner name
        self.report_epochs = bool(report_epochs)
        self.extra_objectives = list(extra_objectives or [])
        self.objective_names = list(objective_names or [])
        self.heartbeat_interval = int(heartbeat_interval or 0)
        self.grace_period = int(grace_period or 0)
        self.poll_seconds = float(poll_seconds)
        self.devices = list(devices or [])
        self.compat_setting = compat
        self.report = report
        self.compat = False
        self.has_identity = True
        self.failures: list[str] = []  # reasons of the trials this command saw fail (and that count)
        self.asked = 0  # trials asked by this command
        self.is_grid = False
        self.parent_run_id: str | None = None
        self.liveness: _storage.Liveness | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.original_cwd = config.hydra.runtime.cwd
        self.has_identity = has_trial_identity(config)
        self.compat = (not self.has_identity) if self.compat_setting is None else bool(self.compat_setting)
        # The Optuna plugin's defaults in compat mode, esc_sweep's otherwise.
        if self.n_jobs is None:
            self.n_jobs = 2 if self.compat else 1
        if self.max_failure_rate is None:
            self.max_failure_rate = 0.0 if self.compat else 0.25
        if self.report is None:
            self.report = "summary" if self.compat else "full"
        if self.extra_objectives and not self.has_identity:
            raise SweepError(
                f"hydra.sweeper.extra_objectives={self.extra_objectives}: read from trial attributes that only "
                "esc_sweep's trainer records; this app's config has no sweep node (return a tuple instead)"
            )
        if self.storage:
            self.storage = _storage.resolve_url(str(self.storage), self.original_cwd)
        else:
            self.storage = None
        if self.storage is not None or not self.compat:  # a persistent study (esc_sweep's default: SQLite)
            if self.heartbeat_interval <= 0:
                raise SweepError(
                    "hydra.sweeper.heartbeat_interval=0 is refused for a saved study: a killed worker's trial "
                    "would stay RUNNING forever (and, with esc_sweep's semantics, block n_trials); use >= 1"
                )
            if self.grace_period <= self.heartbeat_interval:
                raise SweepError(
                    f"hydra.sweeper.grace_period={self.grace_period} must exceed heartbeat_interval="
                    f"{self.heartbeat_interval}, or live trials would be taken for dead ones"
                )

    # ------------------------------------------------------------------ main loop

    def sweep(self, arguments: list[str]) -> None:
        try:
            distributions, fixed_params, fixed_overrides = _private.plugin_search_space(self, arguments)
        except Exception as err:  # a sweep expression Optuna cannot take (empty range, zero step, ...)
            raise SweepError(f"search space: {one_line(err)}") from err
        for name in fixed_params:  # a value given on the command line wins over the search space
            distributions.pop(name, None)
        self._check_parameters(distributions, fixed_params, fixed_overrides)
        self._prepare_grid_sampler(distributions)
        directions = _private.plugin_directions(self)
        bad = [d for d in directions if d not in ("minimize", "maximize")]
        if bad or not directions:
            raise SweepError(f"hydra.sweeper.direction={directions}: each must be minimize or maximize")
        if self.extra_objectives and len(directions) != 1 + len(self.extra_objectives):
            raise SweepError(
                f"hydra.sweeper.direction has {len(directions)} entries for 1 + {len(self.extra_objectives)} "
                f"objectives (the returned value + extra_objectives {self.extra_objectives})"
            )
        task = self._fixed_task_config(fixed_params, fixed_overrides) if self.has_identity else None
        names = self._objective_names(directions, task, distributions)
        space = _identity.space_record(distributions, directions, names, self.custom_search_space)
        # What the objective means beyond the search: data, protocol, every fixed setting (esc_sweep's app only).
        settings = _identity.objective_identity(task, distributions) if task is not None and not self.compat else None
        explicit_name = self._study_name_on_command_line()

        if not self.compat:
            if not self.study_name:
                choices = self.config.hydra.runtime.choices
                self.study_name = _identity.default_study_name(
                    space, choices.get("hparams_search") or self.config.hydra.job.config_name)
            if self.storage is None:
                self.storage = _storage.default_storage_url(self.original_cwd, self.study_name)

        with _storage.study_lock(self.storage, self.study_name):
            # Under the lock: workers starting together would race to create the schema,
            # the study and its search-space record.
            self.rdb = _storage.open_storage(self.storage, self.heartbeat_interval, self.grace_period)
            if settings is not None and not explicit_name:
                # The search's own name is the default: another meaning gets a study of its own.
                self.study_name = _identity.study_for(self.rdb, str(self.study_name), space, settings,
                                                      _storage.mask_url(self.storage))
            try:
                study = optuna.create_study(
                    study_name=self.study_name, storage=self.rdb, sampler=self.sampler, pruner=self.pruner,
                    directions=directions, load_if_exists=True,
                )
            except EscSweepError:
                raise
            except Exception as err:
                raise _storage.StorageError(
                    f"storage {_storage.mask_url(self.storage)}: cannot create or load study "
                    f"{self.study_name!r}: {one_line(err)}") from err
            _identity.check_space(study, space, distributions, _storage.mask_url(self.storage))
            if settings is not None:
                _identity.check_settings(study, settings, _storage.mask_url(self.storage))
            _identity.rename_objectives(study, space)
            if names and study.metric_names != names:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(names)
            self.parent_run_id = self._study_parent_run(study) if self.has_identity else None
        self.study_name = study.study_name
        self.liveness = _storage.Liveness(self.rdb, self.heartbeat_interval, self.grace_period)
        finished = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
        if self.compat:
            log.info("Study %s in %s (%d trials finished before): running %d trials; sampler %s",
                     study.study_name, _storage.mask_url(self.storage), finished, self.n_trials,
                     type(self.sampler).__name__)
        else:
            log.info("Study %s in %s: %d of %d trials finished; sampler %s, pruner %s",
                     study.study_name, _storage.mask_url(self.storage), finished, self.n_trials,
                     type(self.sampler).__name__, self.pruner_spec.get("name"))

        try:
            self._run_trials(study, distributions, fixed_params, fixed_overrides, directions)
        except BaseException:
            if self.parent_run_id:
                from esc_sweep.tracking.study_run import end_study_run  # deferred: mlflow (~5 s)

                try:
                    end_study_run(self.parent_run_id, "KILLED")
                except Exception as err:  # keep the error that stopped the sweep
                    log.warning("could not end the MLflow study run: %s", err)
            raise
        _report.study_report(
            study, directions, self.config.hydra.sweep.dir, self.parent_run_id, n_trials=self.n_trials,
            storage=_storage.mask_url(self.storage), full=self.report == "full",
        )

    def _run_trials(self, study, distributions, fixed_params, fixed_overrides, directions) -> None:
        waiting_for = None
        if self.is_grid and not self.compat:
            accounting.requeue_interrupted_grid_points(study)
        while True:
            stale = _storage.fail_stale_trials(study, self.liveness)
            if stale:
                log.warning("trials %s lost their worker (no heartbeat): marked FAIL", stale)
            if self._grid_exhausted(study):
                log.info("The grid is exhausted.")
                return
            if self.compat:  # the Optuna plugin: n_trials asked by this command
                missing, n_running = self.n_trials - self.asked, 0
            else:
                missing, n_running = accounting.still_to_ask(study.get_trials(deepcopy=False), self.n_trials,
                                                             self._failures_count)
            if missing <= 0:
                if self.compat or n_running == 0 or not self.liveness.enabled:
                    return
                if waiting_for != n_running:
                    log.info("%d trial(s) of other workers still running; waiting in case one needs a replacement",
                             n_running)
                    waiting_for = n_running
                time.sleep(self.poll_seconds)
                continue

            batch: list[optuna.Trial] = []
            failed_before = len(self.failures)
            try:
                for _ in range(min(self.n_jobs, missing)):
                    with _deferred_ctrl_c():  # a trial that exists is in `batch`, to be cleaned up
                        trial = self._ask(study)
                        if trial is not None:
                            batch.append(trial)
                self._launch(study, batch, distributions, fixed_params, fixed_overrides, directions)
            except BaseException as err:  # Ctrl-C or a launcher failure: no trial of ours stays RUNNING
                # (Ctrl-C inside Hydra's config code can surface as another exception.)
                what = "interrupted" if isinstance(err, KeyboardInterrupt) else "sweep stopped"
                for trial in batch:
                    if _private.storage_of(study).get_trial(_private.trial_id(trial)).state == TrialState.RUNNING:
                        self._fail(study, trial, f"{what}: {type(err).__name__}: {err}".rstrip(": "))
                raise
            accounting.check_failure_budget(self.failures, len(self.failures) - failed_before, len(batch),
                                            self.n_trials, self.max_failure_rate, self.compat)

    def _launch(self, study, batch, distributions, fixed_params, fixed_overrides, directions) -> None:
        jobs = []
        for slot, trial in enumerate(batch):
            try:
                overrides = self._trial_overrides(trial, distributions, fixed_params, fixed_overrides)
                if self.devices:  # one accelerator per concurrent job
                    overrides.append(f"trainer.device={self.devices[slot % len(self.devices)]}")
                # Compose the trial's config now, so that one impossible combination
                # fails that trial instead of the launcher (and the whole sweep).
                self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            except Exception as err:
                reason = f"config: {type(err).__name__}: {err}"
                self._fail(study, trial, reason)
                self.failures.append(reason)
                continue
            jobs.append((trial, overrides))
        if not jobs:
            return
        if self.has_identity:
            # One short line per trial instead of the launcher's echo of every override (internal
            # sweep.* keys and floats with all their digits included).
            _report.hide_launch_echo()
            for trial, _ in jobs:
                log.info("%s", _report.trial_start_line(trial.number, trial.params))
        with _storage.Heartbeat(self.liveness, [_private.trial_id(trial) for trial, _ in jobs]):
            # The job number is the trial number: unique across resumes and
            # workers, so jobs never share an output folder.
            returns = self.launcher.launch([o for _, o in jobs], initial_job_idx=jobs[0][0].number)
        with _deferred_ctrl_c():  # a finished job's result is not lost to Ctrl-C
            for (trial, _), ret in zip(jobs, returns):
                self._tell(study, trial, ret, directions)
        del returns  # failed jobs' exceptions hold their frames, and with them tensors
        _free_accelerator_memory()

    def _ask(self, study: optuna.Study) -> optuna.Trial | None:
        # Relative (multivariate) sampling happens inside ask(): seed it by the
        # number this trial will most likely get.
        self._reseed(len(study.get_trials(deepcopy=False)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask()
        self.asked += 1
        if self.liveness is not None:
            self.liveness.beat(_private.trial_id(trial))  # alive from its first moment
        if not self.compat:
            if accounting.is_surplus(study.get_trials(deepcopy=False), trial.number, self.n_trials,
                                     self._failures_count):
                log.info("trial %d is surplus: other workers already claimed the %d trials", trial.number,
                         self.n_trials)
                self._fail(study, trial, "surplus: other workers claimed all n_trials first; not run")
                return None
        self._reseed(trial.number)
        return trial

    def _reseed(self, number: int) -> None:
        """Derive the sampler's random state from (seed, trial number) (esc_sweep's semantics).

        A seeded sampler restarts its random sequence in every process, so a
        resumed sweep would repeat the first trials' parameters, and workers
        with the same seed would run the same parameters. Seeding by trial
        number keeps runs reproducible and trials distinct. Compat mode keeps
        the Optuna plugin's single random stream.
        """
        if self.sampler_seed is None or self.compat:
            return
        seed = int(np.random.SeedSequence([int(self.sampler_seed), int(number)]).generate_state(1)[0])
        _private.reseed_sampler(self.sampler, seed, depth=3)

    def _trial_overrides(self, trial, distributions, fixed_params, fixed_overrides) -> list[str]:
        overrides = _private.plugin_trial_overrides(self, trial, distributions, fixed_params, fixed_overrides)
        if not self.has_identity:  # nothing in this app reads sweep.*: add no keys to its config
            return overrides
        sweep = {
            "sweep.study_name": self.study_name,
            "sweep.storage": self.storage,
            "sweep.trial_number": trial.number,
            "sweep.report_epochs": self.report_epochs,
        }
        if self.parent_run_id:
            sweep["sweep.parent_run_id"] = self.parent_run_id
        return overrides + [f"{key}={override_value(value)}" for key, value in sweep.items()]

    # ------------------------------------------------------------------ results

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn, directions: list[str]) -> None:
        if ret.status != JobStatus.COMPLETED:
            error = _private.job_error(ret)
            if _is_pruned(error):
                study.tell(trial, state=TrialState.PRUNED)
                log.info("trial %d PRUNED (%s)", trial.number, error)
            else:
                self._fail(study, trial, _failure_reason(error))
                self.failures.append(_failure_reason(error))
            return
        try:
            values = accounting.objective_values(ret.return_value, directions, self.extra_objectives,
                                                 lambda: _private.storage_of(study).get_trial(
                                                     _private.trial_id(trial)).user_attrs)
        except ValueError as err:
            self._fail(study, trial, f"bad objective: {err}")
            if not self.compat:  # the Optuna plugin fails such a trial and goes on, whatever max_failure_rate
                self.failures.append(f"bad objective: {err}")
            return
        try:
            study.tell(trial, values=values)
        except RuntimeError as err:  # the grid sampler stops the study once its grid is covered
            if "Study.stop" not in str(err):
                raise
        log.info("%s", _report.trial_result_line(trial.number, values, _trial_attrs(study, trial),
                                                 _report.metric_names(study)))

    def _fail(self, study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
        try:
            trial.set_user_attr("fail_reason", reason[:1000])
            study.tell(trial, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # marked stale by another worker meanwhile
        if not reason.startswith("surplus"):
            log.warning("trial %d FAIL: %s", trial.number, reason)

    # ------------------------------------------------------------------ the search

    def _check_parameters(self, distributions: dict, fixed_params: dict, fixed_overrides: list[str]) -> None:
        """Refuse a parameter the app's config cannot take (a misspelt key, a missing group option)
        before any trial runs. One composition when all is well; one per parameter to name the culprit."""
        base = [f"{name}={value}" for name, value in fixed_params.items()] + list(fixed_overrides)

        def first(distribution) -> Any:
            return distribution.choices[0] if isinstance(distribution, CategoricalDistribution) else distribution.low

        def compose(overrides: list[str]) -> None:
            self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

        try:
            compose(base + [f"{name}={first(d)}" for name, d in distributions.items()])
            return
        except Exception:
            pass
        for name, distribution in distributions.items():
            override = f"{name}={first(distribution)}"
            try:
                compose(base + [override])
            except Exception as err:
                raise SweepError(
                    f"hydra.sweeper.params: {override} does not fit the app's config (misspelt?): {one_line(err)}"
                ) from err
        # Each parameter fits alone: only some combinations fail, and those trials fail one by one.

    def _objective_names(self, directions: list[str], task: DictConfig | None, distributions: dict) -> list[str]:
        """``hydra.sweeper.objective_names``; for esc_sweep's trainer, what its objective is under the task's
        ``trainer.validation`` and ``trainer.objective`` (``identity.objective_name``) and the extra
        objectives; else none."""
        if self.objective_names:
            if len(self.objective_names) != len(directions):
                raise SweepError(f"hydra.sweeper.objective_names={self.objective_names}: one name per direction "
                                 f"({len(directions)})")
            return list(self.objective_names)
        if task is not None and len(directions) == 1 + len(self.extra_objectives):
            validation = OmegaConf.select(task, "trainer.validation", default=None)
            metric = OmegaConf.select(task, "trainer.objective", default="acc")  # acc, or map3 (FSDKaggle2018's)
            searched = any(name == "trainer.validation" or name == "trainer" for name in distributions)
            return [_identity.objective_name(validation, searched, metric), *self.extra_objectives]
        return []

    def _study_name_on_command_line(self) -> bool:
        """Whether the user named the study on the command line (then a mismatch is refused, not avoided)."""
        overrides = OmegaConf.select(self.config, "hydra.overrides.hydra", default=None) or []
        return any(str(o).lstrip("+~").startswith("hydra.sweeper.study_name=") for o in overrides)

    def _fixed_task_config(self, fixed_params: dict, fixed_overrides: list[str]) -> DictConfig:
        """The task's config with this command's fixed settings (the searched keys at their defaults)."""
        base = [f"{name}={value}" for name, value in fixed_params.items()] + list(fixed_overrides)
        try:
            return self.hydra_context.config_loader.load_sweep_config(self.config, base)
        except Exception as err:  # _check_parameters composed the same overrides already: unexpected
            raise SweepError(f"cannot compose the sweep's fixed settings: {one_line(err)}") from err

    # ------------------------------------------------------------------ helpers

    def _prepare_grid_sampler(self, distributions: dict) -> None:
        self.is_grid = getattr(self.sampler, "func", None) is optuna.samplers.GridSampler
        if not self.is_grid:
            return
        continuous = [n for n, d in distributions.items()
                      if isinstance(d, optuna.distributions.FloatDistribution) and d.step is None]
        if continuous:
            raise SweepError(
                f"the grid sampler needs discrete parameters; {', '.join(continuous)} are intervals. "
                "Use choice(...) or range(...) for them."
            )
        grid = {name: _private.grid_choices(d) for name, d in distributions.items()}
        self.sampler = self.sampler(grid)
        size = math.prod(len(v) for v in grid.values())
        if size < self.n_trials:
            log.info("n_trials lowered from %d to the grid's %d points", self.n_trials, size)
            self.n_trials = size

    @property
    def _failures_count(self) -> bool:
        """Whether failed trials that ran count towards n_trials: with a grid (each point is tried once)
        or max_failure_rate=1.0 (failures never stop the sweep)."""
        return self.is_grid or self.max_failure_rate >= 1.0

    def _grid_exhausted(self, study: optuna.Study) -> bool:
        if not self.is_grid:
            return False
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        return not waiting and self.sampler.is_exhausted(study)

    def _study_parent_run(self, study: optuna.Study) -> str | None:
        """The study's MLflow parent run (created once per study; called under the study lock)."""
        task_cfg = self.config
        if not OmegaConf.select(task_cfg, "tracking.enabled", default=False):
            return None
        # deferred: esc_sweep.tracking.study_run imports mlflow (~5 s): only sweeps that track pay for it
        from esc_sweep.tracking.study_run import get_or_create_study_run

        run_id = get_or_create_study_run(task_cfg, study.study_name)
        study.set_user_attr("mlflow_parent_run_id", run_id)
        return run_id


@contextlib.contextmanager
def _deferred_ctrl_c() -> Iterator[None]:
    """Hold Ctrl-C back until the block is done, then raise KeyboardInterrupt.

    Keeps the study consistent: a trial created by ``study.ask()`` is always
    known to the sweeper (and marked FAIL if the sweep is interrupted), and a
    result is always told.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _free_accelerator_memory() -> None:
    """With the basic launcher trials run in this process: hand the GPU memory of
    a finished (or out-of-memory) trial back before the next one starts."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def _trial_attrs(study: optuna.Study, trial: optuna.Trial) -> dict[str, Any]:
    """The user attributes the job recorded (the reporter's fold count and spread), as stored."""
    try:
        return dict(_private.storage_of(study).get_trial(_private.trial_id(trial)).user_attrs)
    except Exception:  # a log line is not worth failing the sweep over
        return {}


def _is_pruned(error: Any) -> bool:
    # Launchers running jobs in other processes may hand back a stand-in
    # RuntimeError("Remote optuna.exceptions.TrialPruned: ...").
    return isinstance(error, optuna.TrialPruned) or "optuna.exceptions.TrialPruned" in str(error)[:80]


def _failure_reason(error: Any) -> str:
    # The exception's class says what happened: NonFiniteLossError (NaN loss),
    # OutOfMemoryError, ConfigError, ...; its message says what to change.
    return f"{type(error).__name__}: {error}"

