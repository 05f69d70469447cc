"""An interrupted grid point is queued again on resume, so the resumed grid covers every point."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from esc_sweep.sweep.accounting import requeue_interrupted_grid_points as requeue


def test_interrupted_grid_point_is_queued_again_once():
    grid = {"lr": [1e-3, 3e-3], "bs": [32, 64]}
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    done = study.ask()
    done.suggest_categorical("lr", grid["lr"]), done.suggest_categorical("bs", grid["bs"])
    study.tell(done, 0.5)
    stopped = study.ask()
    params = {"lr": stopped.suggest_categorical("lr", grid["lr"]), "bs": stopped.suggest_categorical("bs", grid["bs"])}
    stopped.set_user_attr("fail_reason", "interrupted: KeyboardInterrupt")
    study.tell(stopped, state=TrialState.FAIL)


    requeue(study)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [params]
    requeue(study)  # a second resume does not queue it twice
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    again = study.ask()  # the next trial asked is that grid point
    assert {"lr": again.suggest_categorical("lr", grid["lr"]), "bs": again.suggest_categorical("bs", grid["bs"])} \
        == params
