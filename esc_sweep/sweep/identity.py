"""What a study's objective means, so that a study never mixes trials that measure different things.

A trial's value is only comparable with another's when everything the search does
not vary is the same: the data (dataset kind, root, classes, label kind, folds), the
selection protocol (``trainer.validation``) and every other setting of the command
(epochs, model, features, ...). ``objective_identity`` is that record: the task's
composed config without the searched keys and without the keys that cannot change a
result (tracking, progress display, checkpoint places, threads, device choice). It
is stored with the study (user attribute ``esc_sweep.objective_identity``).

The sweeper uses it in two ways (``EscOptunaSweeperImpl.sweep``):

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
import os
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

IDENTITY_ATTR = "esc_sweep.objective_identity"
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
