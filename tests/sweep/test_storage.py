"""Study storages and the pieces of the search-space record, in process: URLs, journal
liveness (a killed worker's trial is found and failed), space differences."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from esc_sweep.sweep.storage import (
    HEARTBEAT_ATTR,
    STALE_REASON,
    Heartbeat,
    Liveness,
    StorageError,
    fail_stale_trials,
    open_storage,
    resolve_url,
    url_for,
)
from esc_sweep.sweep.identity import space_differences as _space_differences


def test_relative_paths_are_taken_from_the_folder_the_command_ran_in(tmp_path):
    assert resolve_url("sqlite:///outputs/s.db", tmp_path) == f"sqlite:///{tmp_path}/outputs/s.db"
    assert resolve_url("sqlite:////abs/s.db", tmp_path) == "sqlite:////abs/s.db"
    assert resolve_url("journal://studies/s.log", tmp_path) == f"journal://{tmp_path}/studies/s.log"
    assert resolve_url("journal:///abs/s.log", tmp_path) == "journal:///abs/s.log"
    assert resolve_url("journal:////abs/s.log", tmp_path) == "journal:///abs/s.log"  # sqlite-style, same file
    with pytest.raises(StorageError, match="is not a URL"):
        resolve_url("outputs/s.db", tmp_path)
    # The dashboard takes a study file too.
    assert url_for("s.db", tmp_path) == f"sqlite:///{tmp_path}/s.db"
    assert url_for(str(tmp_path / "s.log"), "/elsewhere") == f"journal://{tmp_path}/s.log"


def test_a_journal_study_finds_the_trial_of_a_killed_worker_and_fails_it(tmp_path):
    storage = open_storage(f"journal://{tmp_path / 'j.log'}")
    study = optuna.create_study(study_name="j", storage=storage, direction="maximize")
    liveness = Liveness(storage, interval=1, grace_period=1)
    alive, dead = study.ask(), study.ask()
    liveness.beat(dead._trial_id)  # then its worker dies
    with Heartbeat(liveness, [alive._trial_id]):  # beats every second
        time.sleep(2.5)
        # Another worker, with its own view of the file, looks.
        other = optuna.load_study(study_name="j", storage=open_storage(f"journal://{tmp_path / 'j.log'}"))
        assert fail_stale_trials(other, Liveness(other._storage, 1, 1)) == [dead.number]
    got = study.get_trials(deepcopy=False)
    assert got[alive.number].state == TrialState.RUNNING and HEARTBEAT_ATTR in got[alive.number].system_attrs
    assert got[dead.number].state == TrialState.FAIL
    assert got[dead.number].user_attrs["fail_reason"] == STALE_REASON


def test_in_memory_studies_have_no_heartbeat():
    assert not Liveness(optuna.storages.InMemoryStorage(), 30, 120).enabled


def test_space_differences_name_what_changed():
    old = {"params": {"lr": {"name": "FloatDistribution", "attributes": {"low": 0.1, "high": 1.0}},
                      "bs": {"name": "CategoricalDistribution", "attributes": {"choices": [16, 32]}}},
           "directions": ["maximize"], "objectives": ["mean_val_acc"], "custom_search_space": None}
    assert _space_differences(old, old) == []
    new = {**old, "params": {"lr": {"name": "FloatDistribution", "attributes": {"low": 0.1, "high": 2.0}},
                             "wd": {"name": "FloatDistribution", "attributes": {"low": 0.0, "high": 1.0}}},
           "directions": ["minimize"]}
    assert _space_differences(old, new) == [
        "new parameters wd", "parameters no longer searched bs", "other ranges for lr",
        "directions ['maximize'] -> ['minimize']",
    ]
