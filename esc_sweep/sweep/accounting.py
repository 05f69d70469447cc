"""Trial accounting: which trials count towards ``n_trials``, how many are still to ask for, which are
surplus, when failures stop a sweep, and what a finished job's value is.

esc_sweep's semantics (see ``sweeper.py``): ``n_trials`` is the total of finished (COMPLETE and
PRUNED) trials in the study. Failed trials count too with a grid (each point is tried once) or
``max_failure_rate=1.0`` (failures never stop the sweep), except those that never ran. The Optuna
plugin's semantics (compat) count only the trials asked by this command.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from esc_sweep.sweep.messages import SweepError

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Failed trials that never produced a result of their own: replaced even where failures count.
NOT_RUN = ("surplus", "interrupted", "sweep stopped", "stale")


def never_ran(trial: FrozenTrial) -> bool:
    """A failed trial that was closed before (or instead of) running: surplus, interrupted, stopped, stale."""
    return trial.state == TrialState.FAIL and str(trial.user_attrs.get("fail_reason", "")).startswith(NOT_RUN)


def counts(trial: FrozenTrial, failures_count: bool) -> bool:
    """Whether a trial counts towards n_trials: finished ones do; failed ones that ran too when
    ``failures_count`` (a grid, or max_failure_rate=1.0)."""
    if trial.state in FINISHED:
        return True
    if trial.state == TrialState.FAIL and failures_count:
        return not never_ran(trial)
    return False


def claims(trial: FrozenTrial, failures_count: bool) -> bool:
    """Whether a trial holds one of the n_trials places: it counts, or it is running or queued."""
    return trial.state in (TrialState.RUNNING, TrialState.WAITING) or counts(trial, failures_count)


def still_to_ask(trials: Sequence[FrozenTrial], n_trials: int, failures_count: bool) -> tuple[int, int]:
    """(trials to ask for, trials RUNNING) in a study shared by several workers.

    A WAITING trial (a re-queued grid point) is work this worker takes next, not another's."""
    n_counted = sum(counts(t, failures_count) for t in trials)
    n_running = sum(t.state == TrialState.RUNNING for t in trials)
    return n_trials - n_counted - n_running, n_running


def is_surplus(trials: Sequence[FrozenTrial], number: int, n_trials: int, failures_count: bool) -> bool:
    """Whether trial ``number`` came after n_trials others had claimed every place (two workers asked at once).

    Trial numbers are handed out one at a time by the storage, so every trial numbered below it is visible."""
    return sum(claims(t, failures_count) for t in trials if t.number < number) >= n_trials


def interrupted_grid_points(trials: Sequence[FrozenTrial]) -> list[dict[str, Any]]:
    """The parameters of grid points whose trial was interrupted and that no other trial covers (once each).

    A queued (WAITING) trial keeps its parameters in Optuna's "fixed_params" until it is asked."""
    covered = [t.params or t.system_attrs.get("fixed_params", {}) for t in trials if not never_ran(t)]
    points = []
    for t in trials:
        if never_ran(t) and t.params and t.params not in covered:
            points.append(t.params)
            covered.append(t.params)
    return points


def requeue_interrupted_grid_points(study: optuna.Study) -> None:
    """Queue again every grid point whose trial never ran to an end (Ctrl-C, a stopped sweep), so a
    resumed grid covers every point (the grid sampler counts it as visited)."""
    for params in interrupted_grid_points(study.get_trials(deepcopy=False)):
        study.enqueue_trial(params)
        log.info("grid point %s was interrupted: queued to run again", params)


def check_failure_budget(failures: Sequence[str], batch_failures: int, batch_size: int, n_trials: int,
                         max_failure_rate: float, compat: bool) -> None:
    """Raise SweepError when the failures seen so far exceed ``max_failure_rate``: of ``n_trials``
    (esc_sweep's semantics; 1.0 never stops), or of one batch (compat, the Optuna plugin's rule)."""
    if not failures:
        return
    hint = "see each trial's fail_reason; raise hydra.sweeper.max_failure_rate to go on"
    if compat:
        if batch_size and batch_failures / batch_size > max_failure_rate:
            raise SweepError(
                f"{batch_failures} of {batch_size} trials of a batch failed, more than max_failure_rate="
                f"{max_failure_rate} allows. Last: {failures[-1]} ({hint})"
            )
        return
    if max_failure_rate >= 1.0:
        return
    if len(failures) > max_failure_rate * n_trials:
        raise SweepError(
            f"{len(failures)} trials failed in this sweep, more than max_failure_rate="
            f"{max_failure_rate} of n_trials={n_trials} allows. Last: {failures[-1]} ({hint})"
        )


def objective_values(returned: Any, directions: Sequence[str], extra_objectives: Sequence[str],
                     user_attrs: Callable[[], Mapping[str, Any]]) -> list[float]:
    """The values to tell the study for a job that returned ``returned``; ValueError when they are unusable.

    A single number is followed by the ``extra_objectives`` the trial recorded as user attributes
    (``user_attrs`` reads them, only when needed)."""
    try:
        if isinstance(returned, (list, tuple)):
            values = [float(v) for v in returned]
        else:
            values = [float(returned)]
    except (TypeError, ValueError) as err:  # None, a string, a dict: fail the trial, not the sweep
        raise ValueError(f"the task must return a number (one per direction), got {returned!r}") from err
    if extra_objectives and not isinstance(returned, (list, tuple)):
        recorded = user_attrs()
        for name in extra_objectives:
            if name not in recorded:
                raise ValueError(f"extra objective {name!r} was not recorded by the trial")
            values.append(float(recorded[name]))
    if len(values) != len(directions):
        raise ValueError(f"{len(values)} objective values for {len(directions)} directions")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"objective is not finite: {values}")
    return values
