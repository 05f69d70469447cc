"""Search identity: what a study's objective means, so that a study never mixes trials that measure
different things. Two records are stored with a study: the search (``space_record``: parameters and
their ranges, directions, objective names; checked by ``check_space``) and the fixed settings
(``objective_identity``; checked by ``check_settings``). The study names derive from both.

A trial's value is only comparable with another's when everything the search does
not vary is the same: the data (dataset kind, root, classes, label kind, folds), the
selection protocol (``trainer.validation``) and every other setting of the command
(epochs, model, features, ...). ``objective_identity`` is that record: the task's
composed config without the searched keys and without the keys that cannot change a
result (tracking, progress display, checkpoint places, threads, device choice). It
is stored with the study (user attribute ``esc_sweep.objective_identity``).

The sweeper uses the settings record in two ways (``EscOptunaSweeperImpl.sweep``):

* study name from the search config (the default): the study of that name is resumed
  only when its record matches; otherwise the study ``<name>-<hash of the record>`` is
  used, so re-running a search on other data or with other fixed settings starts a
  study of its own;
* an explicit ``hydra.sweeper.study_name=...`` on the command line: a mismatch is
  refused in one line that names the keys that differ.

A study made by an earlier esc_sweep has no record: it is resumed as before and gets
this command's record (its earlier trials cannot be checked).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import distribution_to_json

from esc_sweep.sweep.messages import SweepError

log = logging.getLogger(__name__)

IDENTITY_ATTR = "esc_sweep.objective_identity"
# Study user attribute holding the search the study was made for (``space_record``).
SPACE_ATTR = "esc_sweep.search_space"
# Study attribute holding the fingerprint of the data the first trial read (checked by every trial).
DATA_FINGERPRINT_ATTR = "esc_sweep.data_fingerprint"

# Keys (and subtrees) that cannot change a trial's value.
NEUTRAL_KEYS = (
    "hydra", "tracking", "sweep", "task_name",
    "trainer.progress", "trainer.resume", "trainer.checkpoint_dir", "trainer.checkpoint_every",
    "trainer.parallel_folds", "trainer.num_threads", "trainer.device", "trainer.dry_run",
    "trainer.final_fit", "trainer.save_fold_ensemble", "trainer.keep_fold_models",
)
# Settings named first in a message, because they change what the objective means most.
DATA_KEYS = ("data.root", "dataset.", "trainer.folds", "trainer.validation")


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            _flatten(value, f"{prefix}{key}.", out)
    else:
        out[prefix[:-1]] = node


def _is_under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _container(cfg: DictConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in cfg:
        if key == "hydra":
            continue
        node = cfg._get_node(key)
        if not isinstance(node, DictConfig):  # a plain value (task_name: cv)
            out[key] = OmegaConf.to_container(OmegaConf.create({"v": node}), resolve=False)["v"]
            continue
        try:
            out[key] = OmegaConf.to_container(node, resolve=True)
        except Exception:  # an interpolation that needs a running job: its text identifies it just as well
            out[key] = OmegaConf.to_container(node, resolve=False)
    return out


def data_root(cfg: Mapping[str, Any]) -> str:
    """Where the data comes from: ``dataset.root``, else ``$ESC50_ROOT`` for ESC-50, else the download."""
    dataset = cfg.get("dataset") or {}
    root = dataset.get("root")
    if root:
        return os.path.abspath(os.path.expanduser(str(root)))
    if dataset.get("kind") == "esc50" and os.environ.get("ESC50_ROOT"):
        return os.path.abspath(os.path.expanduser(os.environ["ESC50_ROOT"]))
    return "download" if dataset.get("kind") == "esc50" else "none"


def objective_identity(task_cfg: DictConfig, searched: Iterable[str]) -> dict[str, Any]:
    """Every fixed setting of the task that can change a trial's value, as ``{dotted key: value}``.

    ``searched``: the parameters the search varies (a group name like ``model`` covers its subtree).
    """
    container = _container(task_cfg)
    flat: dict[str, Any] = {}
    _flatten(container, "", flat)
    searched = list(searched)
    identity = {k: v for k, v in flat.items() if not _is_under(k, NEUTRAL_KEYS) and not _is_under(k, searched)}
    identity["data.root"] = data_root(container)
    # JSON round trip: the record compares equal to the one read back from the storage.
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def digest(record: Any, length: int = 8) -> str:
    return hashlib.sha1(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:length]


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ (or exist on one side only), data and protocol first."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))
    return sorted(keys, key=lambda k: (not any(k.startswith(p) for p in DATA_KEYS), k))


def describe_differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 6) -> str:
    """``dataset.classes ([dog, rain] -> [...]), trainer.epochs (2 -> 1)``: the first few differing keys."""
    keys = differing_keys(old, new)

    def short(value: Any) -> str:
        text = json.dumps(value, default=str) if not isinstance(value, str) else value
        return text if len(text) <= 40 else text[:37] + "..."

    parts = [f"{k} ({short(old.get(k, '<unset>'))} -> {short(new.get(k, '<unset>'))})" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts)


# ------------------------------------------------------------------ what the objective is called

# The objective esc_sweep's trainer returns (``CVResult.objective``), named for what it averages: the
# inner split's score with trainer.validation=inner, else the test folds'; of trainer.objective's metric
# (acc: accuracy, map3: MAP@3). mean_inner_or_val_<metric>: the search varies trainer.validation.
VALIDATION_PREFIX = {"inner": "mean_inner", "test_fold": "mean_val", "none": "mean_val"}
SEARCHED_VALIDATION_PREFIX = "mean_inner_or_val"
METRICS = ("acc", "map3")


def objective_name(validation: Any, searched: bool = False, metric: Any = "acc") -> str:
    """What esc_sweep's objective is under ``trainer.validation`` (``searched``: the search varies it)
    and ``trainer.objective`` (``metric``)."""
    prefix = SEARCHED_VALIDATION_PREFIX if searched else VALIDATION_PREFIX.get(str(validation), "mean_val")
    return f"{prefix}_{metric if str(metric) in METRICS else 'acc'}"


def _comparable(space: Mapping[str, Any] | None) -> Any:
    """``space`` with esc_sweep's objective names as earlier versions recorded them: ``mean_val_<metric>``
    whatever trainer.validation was, so studies (and study names) made then still resume."""
    if not isinstance(space, Mapping):
        return space
    ours = {objective_name(v, s, m): f"mean_val_{m}"
            for v in VALIDATION_PREFIX for s in (False, True) for m in METRICS}
    return {**space, "objectives": [ours.get(n, n) for n in space.get("objectives") or []]}


# ------------------------------------------------------------------ the search and the study it goes into

def space_record(distributions: Mapping[str, Any], directions: Sequence[str], names: Sequence[str],
                 custom_search_space: str | None) -> dict[str, Any]:
    """The search as stored with its study: parameters with their ranges, directions, objective names."""
    return {
        "params": {name: json.loads(distribution_to_json(d)) for name, d in sorted(distributions.items())},
        "directions": list(directions),
        "objectives": list(names),
        "custom_search_space": custom_search_space,
    }


def default_study_name(space: Mapping[str, Any], search_name: str | None) -> str:
    """<search or config name>-<hash of the search>: two different searches never share a study."""
    digest_text = hashlib.sha1(json.dumps(_comparable(space), sort_keys=True).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', str(search_name or 'study'))}-{digest_text}"


def study_for(storage: optuna.storages.BaseStorage, base: str, space: Mapping[str, Any],
              settings: Mapping[str, Any], where: str) -> str:
    """The study for this search and these settings: ``base`` when that study is free, made for the
    same (or by an earlier esc_sweep that recorded nothing); else ``<base>-<hash of both>``.
    ``where``: the storage as a message names it."""
    studies = {s.study_name: s for s in storage.get_all_studies()}
    derived = f"{base}-{digest({'space': _comparable(space), 'settings': settings})}"
    for name in (base, derived):
        study = studies.get(name)
        if study is None:
            return name
        stored_space = _comparable(study.user_attrs.get(SPACE_ATTR))
        stored_settings = study.user_attrs.get(IDENTITY_ATTR)
        if stored_settings == settings and stored_space == _comparable(space):
            return name
        if stored_settings is None and stored_space in (None, _comparable(space)):  # made before settings were recorded
            return name
    raise SweepError(f"studies {base!r} and {derived!r} in {where} were both made "
                     "for other settings; name a new one with hydra.sweeper.study_name=<name>")


def check_settings(study: optuna.Study, settings: Mapping[str, Any], where: str) -> None:
    """Record the fixed settings with a new study; refuse to resume a study made with other settings."""
    stored = study.user_attrs.get(IDENTITY_ATTR)
    if stored is None:
        if study.get_trials(deepcopy=False):
            log.warning("study %s was made by an earlier esc_sweep that did not record its data and fixed "
                        "settings: recorded now from this command (its earlier trials cannot be checked)",
                        study.study_name)
        study.set_user_attr(IDENTITY_ATTR, settings)
        return
    if stored != settings:
        raise SweepError(
            f"study {study.study_name!r} in {where} was run with other settings: "
            f"{describe_differences(stored, settings)}. Its trials would not be comparable: resume it "
            "with its own settings, or start another study (another hydra.sweeper.study_name, or leave it "
            "unset for one derived from the settings)"
        )


def check_space(study: optuna.Study, space: Mapping[str, Any], distributions: Mapping[str, Any], where: str) -> None:
    """Record the search with a new study; refuse to resume a study made for another search.

    Objective names an earlier esc_sweep recorded (``mean_val_<metric>``) match today's: see ``rename_objectives``."""
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is None:
        differences = legacy_differences(study, space, distributions)
    else:
        differences = space_differences(stored, space)
        if _comparable(stored)["objectives"] == _comparable(space)["objectives"]:  # only renamed (_comparable)
            differences = [d for d in differences if not d.startswith("objectives ")]
    if differences:
        raise SweepError(
            f"study {study.study_name!r} in {where} was made for another search "
            f"({'; '.join(differences)}): resume it with its own search, or start another study "
            "(hydra.sweeper.study_name=<new name>, or null for one derived from the search)"
        )
    if stored is None:
        study.set_user_attr(SPACE_ATTR, dict(space))


def rename_objectives(study: optuna.Study, space: Mapping[str, Any]) -> None:
    """Give a study's recorded search today's objective names (once ``check_space`` and
    ``check_settings`` accepted it): an earlier esc_sweep called every objective ``mean_val_acc``."""
    if study.user_attrs.get(SPACE_ATTR) != space:
        study.set_user_attr(SPACE_ATTR, dict(space))


def space_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two search records, in words (empty when they are the same search)."""
    def canon(value: Any) -> str:
        return json.dumps(value, sort_keys=True)

    out = []
    old_params, new_params = old.get("params", {}), new.get("params", {})
    added = sorted(set(new_params) - set(old_params))
    removed = sorted(set(old_params) - set(new_params))
    changed = sorted(n for n in set(old_params) & set(new_params) if canon(old_params[n]) != canon(new_params[n]))
    if added:
        out.append(f"new parameters {', '.join(added)}")
    if removed:
        out.append(f"parameters no longer searched {', '.join(removed)}")
    if changed:
        out.append(f"other ranges for {', '.join(changed)}")
    for key in ("directions", "objectives", "custom_search_space"):
        if canon(old.get(key)) != canon(new.get(key)):
            out.append(f"{key} {old.get(key)} -> {new.get(key)}")
    return out


def legacy_differences(study: optuna.Study, space: Mapping[str, Any], distributions: Mapping[str, Any]) -> list[str]:
    """A study without a recorded search (new, or made by the Optuna plugin or an older esc_sweep):
    compare with what its trials show."""
    out = []
    directions = [d.name.lower() for d in study.directions]
    if directions != space["directions"]:
        out.append(f"directions {directions} -> {space['directions']}")
    seen: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        seen.update(trial.distributions)
    changed = sorted(n for n, d in seen.items() if n in distributions and d != distributions[n])
    if changed:
        out.append(f"other ranges for {', '.join(changed)}")
    if not space["custom_search_space"]:
        gone = sorted(set(seen) - set(distributions))
        if gone:
            out.append(f"parameters no longer searched {', '.join(gone)}")
    return out
