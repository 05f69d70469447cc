"""What an interrupted run keeps, and how the output folders of an interrupted and a resumed run link up.

The work a resume reuses (finished folds, folds saved part-way) lives in the run's
checkpoint folder, not in an output folder. Each command still gets its own output
folder (``outputs/runs/<date>/<time>_<model>_<tag>/``, chosen by Hydra before the run
starts), so each attempt's log and config stay with the attempt that wrote them. The
attempt that completes writes results.json (and the bundle) into its own folder, and
the folders point at each other, so no result is left to hunt for:

- ``resumed_from.txt`` in the resumed run's folder lists the earlier attempts' folders;
- ``resumed_in.txt`` in each earlier attempt's folder names the latest one.

The attempts' folders are recorded in the checkpoint folder's ``state.json``
(``output_dirs``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esc_sweep.paths import write_text_atomically
from esc_sweep.training.callbacks import Callback

if TYPE_CHECKING:
    from esc_sweep.training.checkpoint import FoldCheckpoints, Kept

log = logging.getLogger("esc_sweep")

RESUMED_FROM = "resumed_from.txt"
RESUMED_IN = "resumed_in.txt"


def current_output_dir() -> Path:
    """This run's output folder: Hydra's, or the working folder outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig  # deferred: hydra (~0.7 s) — plain Python callers pay nothing

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


def _folds(folds: list[int]) -> str:
    return ("fold " if len(folds) == 1 else "folds ") + ", ".join(map(str, folds))


def describe_kept(kept: "Kept") -> str:
    """``folds 1, 2 finished and fold 3 saved at epoch 12 are kept``."""
    parts = [f"{_folds(kept.finished)} finished"] if kept.finished else []
    parts += [f"fold {fold} saved at epoch {epoch}" for fold, epoch in sorted(kept.in_progress.items())]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    many = len(kept.finished) + len(kept.in_progress) > 1
    return f"{listed} {'are' if many else 'is'} kept"


class KeptWork(Callback):
    """Knows the run's checkpoint folder: links the output folders of the attempts, words the Ctrl-C message."""

    def __init__(self, cfg: Any, output_dir: Path):
        self.cfg = cfg  # read when needed: it is validated after this is made
        self.output_dir = Path(output_dir).resolve()
        self.checkpoints: FoldCheckpoints | None = None
        self.cv_finished = False

    def on_cv_start(self, context: dict[str, Any]) -> None:
        self.checkpoints = context["checkpoints"]
        kept = self.checkpoints.kept(list(self.cfg.trainer.folds))
        here = str(self.output_dir)
        earlier = [d for d in self.checkpoints.state.get("output_dirs") or [] if d != here] if kept else []
        if earlier:
            log.info("reusing the work of an earlier run of this configuration in %s: %s (%s there points here)",
                     earlier[-1], describe_kept(kept), RESUMED_IN)
            self._link(earlier, kept)
        self.checkpoints.update_state(output_dirs=[*earlier, here])

    def _link(self, earlier: list[str], kept: "Kept") -> None:
        notes = {self.output_dir / RESUMED_FROM: (
            f"This run continued the work that earlier runs of the same command kept in {kept.directory}\n"
            f"({describe_kept(kept)} when it started). Their output folders, oldest first:\n"
            + "".join(f"{folder}\n" for folder in earlier))}
        for folder in map(Path, earlier):
            if folder.is_dir():  # a folder the user deleted is not made again
                notes[folder / RESUMED_IN] = (
                    f"The work this run kept was continued by the same command in:\n{self.output_dir}\n"
                    "Its results (results.json, the bundle) are written there.\n")
        for path, text in notes.items():
            try:
                write_text_atomically(path, text)
            except OSError as err:  # a note, not a result: a read-only old folder must not stop the run
                log.warning("could not write %s (%s)", path, err)

    def on_cv_end(self, result: Any) -> None:
        self.cv_finished = True

    def interrupt_message(self) -> str:
        """What Ctrl-C left for the same command to resume, in one line (after ``interrupted:``)."""
        again = "run the same command again to"
        if self.checkpoints is None:
            return f"before any fold started, so nothing is kept; {again} start."
        trainer = self.cfg.trainer
        kept = self.checkpoints.kept(list(trainer.folds))
        if not kept:
            every = trainer.checkpoint_every
            return (f"no fold finished and no epoch was saved yet (trainer.checkpoint_every={every}), "
                    f"so nothing is kept; {again} start over.")
        final_fit = " (the final fit trains again)" if self.cv_finished and trainer.final_fit else ""
        return f"{describe_kept(kept)} in {kept.directory}; {again} resume{final_fit}."
