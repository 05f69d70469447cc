"""The esc_optuna sweeper: the Optuna plugin's search space and samplers, with

* pruning: each job gets its trial's identity and the study storage as
  ``sweep.*`` overrides; the trainer's ``TrialReporter`` reports to the trial
  and raises ``optuna.TrialPruned``, which is told to the study as PRUNED;
* failures (exceptions, NaN loss, out of memory) told as FAIL with the
  reason in the trial's ``fail_reason`` user attribute; the sweep goes on
  while failures stay within ``max_failure_rate * n_trials``;
* ``n_trials`` as the total of finished (COMPLETE + PRUNED) trials in the
  study: a re-run resumes and runs only the missing trials, and several
  workers on one storage stop at exactly ``n_trials`` between them;
* a study report at the end (table, best trial, importances, figures on the
  study's MLflow parent run, ``optimization_results.yaml``).

How several workers share a study exactly: before asking for a trial a
worker counts the trials that are finished or RUNNING (anyone's) and asks
only if that is below ``n_trials``. Two workers can pass that check at the
same moment, so after asking it checks again: trial numbers are handed out
one at a time under a lock in Optuna's RDB storage, so all trials numbered
below ours are visible; if ``n_trials`` of them are finished or running, our
trial is surplus and is closed as FAIL (reason "surplus") without running.
A worker with nothing to ask waits while other workers' trials run, because
one of them may fail and need a replacement; heartbeats let it tell a
running trial from one whose worker was killed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from esc_sweep.errors import EscSweepError
from esc_sweep.sweep.reporter import build_pruner

from esc_sweep.sweep import report as _report
from esc_sweep.sweep import storage as _storage

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SweepError(EscSweepError):
    """The sweep cannot go on (too many failed trials, a bad sweeper setting)."""


class EscOptunaSweeperImpl(OptunaSweeperImpl):
    def __init__(
        self,
        *,
        sampler: Any,
        sampler_seed: int | None,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        custom_search_space: str | None,
        params: DictConfig | None,
        pruner: DictConfig,
        report_epochs: bool,
        extra_objectives: Sequence[str],
        heartbeat_interval: int,
        grace_period: int,
        poll_seconds: float,
        devices: Sequence[str] = (),
    ) -> None:
        super().__init__(sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate,
                         custom_search_space, params)
        if n_trials < 1 or n_jobs < 1:
            raise SweepError(f"hydra.sweeper.n_trials={n_trials} and n_jobs={n_jobs} must both be >= 1")
        self.sampler_seed = sampler_seed
        self.pruner_spec = OmegaConf.to_container(pruner, resolve=True) if isinstance(pruner, DictConfig) else pruner
        self.pruner = build_pruner(self.pruner_spec)  # fails early on a bad pruner name
        self.report_epochs = bool(report_epochs)
        self.extra_objectives = list(extra_objectives or [])
        self.heartbeat_interval = int(heartbeat_interval or 0)
        self.grace_period = int(grace_period or 0)
        self.poll_seconds = float(poll_seconds)
        self.devices = list(devices or [])
        self.failures: list[str] = []  # reasons of the trials this command saw fail
        self.is_grid = False

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.original_cwd = config.hydra.runtime.cwd
        if not self.study_name:
            self.study_name = config.hydra.runtime.choices.get("hparams_search") or "esc_sweep"
        if not self.storage:
            self.storage = _storage.default_storage_url(self.original_cwd, self.study_name)
        self.storage = _storage.normalize_url(str(self.storage))

    # ------------------------------------------------------------------ main loop

    def sweep(self, arguments: list[str]) -> None:
        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config() + list(arguments)
        distributions, fixed_params, fixed_overrides = create_params_from_overrides(params_conf)
        for name in fixed_params:  # a value given on the command line wins over the search space
            distributions.pop(name, None)
        self._prepare_grid_sampler(distributions)
        directions = self._get_directions()
        if len(directions) != 1 + len(self.extra_objectives):
            raise SweepError(
                f"hydra.sweeper.direction has {len(directions)} entries for 1 + {len(self.extra_objectives)} "
                f"objectives (accuracy + extra_objectives {self.extra_objectives})"
            )

        with _storage.study_lock(self.storage, self.study_name):
            # Under the lock: workers starting together would race to create the schema.
            self.rdb = _storage.make_storage(self.storage, self.heartbeat_interval, self.grace_period)
            study = optuna.create_study(
                study_name=self.study_name, storage=self.rdb, sampler=self.sampler, pruner=self.pruner,
                directions=directions, load_if_exists=True,
            )
            self.parent_run_id = self._study_parent_run(study)
        finished = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
        log.info("Study %s in %s: %d of %d trials finished; sampler %s, pruner %s",
                 study.study_name, _storage.mask_url(self.storage), finished, self.n_trials,
                 type(self.sampler).__name__, self.pruner_spec.get("name"))

        try:
            self._run_trials(study, distributions, fixed_params, fixed_overrides, directions)
        except BaseException:
            if self.parent_run_id:
                from esc_sweep.tracking.study_run import end_study_run

                try:
                    end_study_run(self.parent_run_id, "KILLED")
                except Exception as err:  # keep the error that stopped the sweep
                    log.warning("could not end the MLflow study run: %s", err)
            raise
        _report.study_report(
            study, directions, self.config.hydra.sweep.dir, self.parent_run_id, n_trials=self.n_trials,
            storage=_storage.mask_url(self.storage),
        )

    def _run_trials(self, study, distributions, fixed_params, fixed_overrides, directions) -> None:
        waiting_for = None
        while True:
            stale = _storage.fail_stale_trials(study, self.rdb)
            if stale:
                log.warning("trials %s lost their worker (no heartbeat): marked FAIL", stale)
            if self._grid_exhausted(study):
                log.info("The grid is exhausted.")
                return
            trials = study.get_trials(deepcopy=False)
            n_finished = sum(t.state in self._counted for t in trials)
            n_running = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
            missing = self.n_trials - n_finished - n_running
            if missing <= 0:
                if n_running == 0 or not self.heartbeat_interval:
                    return
                if waiting_for != n_running:
                    log.info("%d trial(s) of other workers still running; waiting in case one needs a replacement",
                             n_running)
                    waiting_for = n_running
                time.sleep(self.poll_seconds)
                continue

            batch: list[optuna.Trial] = []
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
                    if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                        self._fail(study, trial, f"{what}: {type(err).__name__}: {err}".rstrip(": "))
                raise
            self._check_failure_budget()

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
        with _storage.Heartbeat(self.rdb, [trial._trial_id for trial, _ in jobs]):
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
        if self.heartbeat_interval:
            self.rdb.record_heartbeat(trial._trial_id)  # alive from its first moment
        ahead = sum(t.state in self._claimed for t in study.get_trials(deepcopy=False) if t.number < trial.number)
        if ahead >= self.n_trials:
            log.info("trial %d is surplus: other workers already claimed the %d trials", trial.number, self.n_trials)
            self._fail(study, trial, "surplus: other workers claimed all n_trials first; not run")
            return None
        self._reseed(trial.number)
        return trial

    def _reseed(self, number: int) -> None:
        """Derive the sampler's random state from (seed, trial number).

        A seeded sampler restarts its random sequence in every process, so a
        resumed sweep would repeat the first trials' parameters, and workers
        with the same seed would run the same parameters. Seeding by trial
        number keeps runs reproducible and trials distinct.
        """
        if self.sampler_seed is None:
            return
        seed = int(np.random.SeedSequence([int(self.sampler_seed), int(number)]).generate_state(1)[0])
        _reseed_random_states(self.sampler, seed, depth=3)

    def _trial_overrides(self, trial, distributions, fixed_params, fixed_overrides) -> list[str]:
        (overrides,) = self._configure_trials([trial], distributions, fixed_params, fixed_overrides)
        sweep = {
            "sweep.study_name": self.study_name,
            "sweep.storage": self.storage,
            "sweep.trial_number": trial.number,
            "sweep.report_epochs": self.report_epochs,
        }
        if self.parent_run_id:
            sweep["sweep.parent_run_id"] = self.parent_run_id
        return list(overrides) + [f"{key}={_override_value(value)}" for key, value in sweep.items()]

    # ------------------------------------------------------------------ results

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn, directions: list[str]) -> None:
        if ret.status != JobStatus.COMPLETED:
            error = ret._return_value
            if _is_pruned(error):
                study.tell(trial, state=TrialState.PRUNED)
                log.info("trial %d PRUNED (%s)", trial.number, error)
            else:
                self._fail(study, trial, _failure_reason(error))
                self.failures.append(_failure_reason(error))
            return
        try:
            values = self._objective_values(trial, ret.return_value)
        except ValueError as err:
            self._fail(study, trial, f"bad objective: {err}")
            self.failures.append(str(err))
            return
        try:
            study.tell(trial, values=values)
        except RuntimeError as err:  # the grid sampler stops the study once its grid is covered
            if "Study.stop" not in str(err):
                raise
        log.info("trial %d COMPLETE: %s", trial.number, values if len(values) > 1 else values[0])

    def _objective_values(self, trial: optuna.Trial, returned: Any) -> list[float]:
        if isinstance(returned, (list, tuple)):
            values = [float(v) for v in returned]
        else:
            values = [float(returned)]
            user_attrs = trial.study._storage.get_trial(trial._trial_id).user_attrs
            for name in self.extra_objectives:
                if name not in user_attrs:
                    raise ValueError(f"extra objective {name!r} was not recorded by the trial")
                values.append(float(user_attrs[name]))
        if len(values) != len(self._get_directions()):
            raise ValueError(f"{len(values)} objective values for {len(self._get_directions())} directions")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"objective is not finite: {values}")
        return values

    def _fail(self, study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
        try:
            trial.set_user_attr("fail_reason", reason[:1000])
            study.tell(trial, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # marked stale by another worker meanwhile
        if not reason.startswith("surplus"):
            log.warning("trial %d FAIL: %s", trial.number, reason)

    def _check_failure_budget(self) -> None:
        allowed = self.max_failure_rate * self.n_trials
        if len(self.failures) > allowed:
            raise SweepError(
                f"{len(self.failures)} trials failed in this sweep, more than max_failure_rate="
                f"{self.max_failure_rate} of n_trials={self.n_trials} allows. Last: {self.failures[-1]} "
                "(see each trial's fail_reason; raise hydra.sweeper.max_failure_rate to go on)"
            )

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
        grid = {name: self._to_grid_sampler_choices(d) for name, d in distributions.items()}
        self.sampler = self.sampler(grid)
        size = math.prod(len(v) for v in grid.values())
        if size < self.n_trials:
            log.info("n_trials lowered from %d to the grid's %d points", self.n_trials, size)
            self.n_trials = size

    @property
    def _counted(self) -> tuple[TrialState, ...]:
        """States that count towards n_trials: with a grid, each point is tried once, whatever its outcome."""
        return FINISHED + (TrialState.FAIL,) if self.is_grid else FINISHED

    @property
    def _claimed(self) -> tuple[TrialState, ...]:
        return self._counted + (TrialState.RUNNING, TrialState.WAITING)

    def _grid_exhausted(self, study: optuna.Study) -> bool:
        return self.is_grid and self.sampler.is_exhausted(study)

    def _study_parent_run(self, study: optuna.Study) -> str | None:
        """The study's MLflow parent run (created once per study; called under the study lock)."""
        task_cfg = self.config
        if not OmegaConf.select(task_cfg, "tracking.enabled", default=False):
            return None
        from esc_sweep.tracking.study_run import get_or_create_study_run

        run_id = get_or_create_study_run(task_cfg, study.study_name)
        study.set_user_attr("mlflow_parent_run_id", run_id)
        return run_id


def _reseed_random_states(obj: Any, seed: int, depth: int) -> None:
    """Seed every Optuna LazyRandomState held by a sampler and its inner samplers."""
    from optuna.samplers._lazy_random_state import LazyRandomState

    for index, value in enumerate(vars(obj).values()):
        if isinstance(value, LazyRandomState):
            value.rng.seed((seed + index) % 2**32)
        elif depth > 0 and isinstance(value, optuna.samplers.BaseSampler):
            _reseed_random_states(value, (seed * 31 + index) % 2**32, depth - 1)


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
    import gc
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def _is_pruned(error: Any) -> bool:
    # Launchers running jobs in other processes may hand back a stand-in
    # RuntimeError("Remote optuna.exceptions.TrialPruned: ...").
    return isinstance(error, optuna.TrialPruned) or "optuna.exceptions.TrialPruned" in str(error)[:80]


def _failure_reason(error: Any) -> str:
    # The exception's class says what happened: NonFiniteLossError (NaN loss),
    # OutOfMemoryError, ConfigError, ...; its message says what to change.
    return f"{type(error).__name__}: {error}"


def _override_value(value: Any) -> str:
    """A value as Hydra override text; strings quoted so URLs with ?&=: parse."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise SweepError(f"cannot pass {text!r} as a Hydra override (it holds both quote kinds)")
