"""Fold-level checkpoints so an interrupted cross-validation can resume.

A run's checkpoint folder is named by a hash of everything that changes its
results (the config minus tracking/display knobs, plus the dataset
fingerprint). Finished folds are saved there as JSON; a rerun of the same
command skips them. A cross-validation that completed is marked so, and the
next identical run starts afresh instead of replaying it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from esc_sweep.training.results import FoldResult

log = logging.getLogger(__name__)

# Keys that do not change what a fold computes.
_IGNORED_KEYS = ("tracking", "trainer.progress", "trainer.resume", "trainer.checkpoint_dir",
                 "trainer.folds", "trainer.final_fit", "sweep.parent_run_id", "task_name")


def config_key(cfg: Any, fingerprint: str) -> str:
    data = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    for dotted in _IGNORED_KEYS:
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    blob = json.dumps({"config": data, "data": fingerprint}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)  # atomic: a kill never leaves half a file


class FoldCheckpoints:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _fold_path(self, fold: int) -> Path:
        return self.directory / f"fold_{fold}.json"

    def load(self, fold: int) -> FoldResult | None:
        """The saved result of ``fold``; None when absent or unreadable (the fold is then rerun)."""
        path = self._fold_path(fold)
        if not path.exists():
            return None
        try:
            return FoldResult.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Saves are atomic, but a copied, hand-edited or disk-full file can still
            # be damaged: recomputing one fold beats failing the whole run.
            log.warning("fold %d checkpoint %s is unreadable (%s: %s); training the fold again",
                        fold, path, type(exc).__name__, exc)
            return None

    def save(self, result: FoldResult) -> None:
        _write_json(self._fold_path(result.fold), result.to_dict())

    @property
    def state(self) -> dict[str, Any]:
        path = self.directory / "state.json"
        if not path.exists():
            return {}
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("checkpoint state %s is unreadable (%s); ignoring it", path, exc)
            return {}
        return state if isinstance(state, dict) else {}

    def update_state(self, **values: Any) -> None:
        _write_json(self.directory / "state.json", {**self.state, **values})

    def is_complete(self) -> bool:
        return bool(self.state.get("complete"))

    def completed_folds(self) -> list[int] | None:
        """The folds of the run that completed here, or None when none completed."""
        if not self.is_complete():
            return None
        folds = self.state.get("completed_folds")
        return sorted(folds) if isinstance(folds, list) else []

    def mark_complete(self, folds: list[int] | None = None) -> None:
        self.update_state(complete=True, completed_folds=sorted(folds or []))

    def reopen(self) -> None:
        """Keep the finished folds for a run that asks for other folds (e.g. all five after fold 1 alone)."""
        self.update_state(complete=False, completed_folds=None)

    def reset(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
