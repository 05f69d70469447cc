"""The Hydra application: ``python -m esc_sweep [overrides]``.

Composes the config, validates it, runs the cross-validation with tracking,
prints the results and returns the objective a sweep maximises
(``CVResult.objective``: the inner split's mean accuracy with
``trainer.validation=inner``, else the test folds' mean accuracy).
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.markup import escape

from esc_sweep.app.progress import TrainingProgress
from esc_sweep.app.resume import KeptWork, current_output_dir
from esc_sweep.config import register_configs, validate
from esc_sweep.errors import EscSweepError
from esc_sweep.paths import CONFIG_DIR
from esc_sweep.console import console
from esc_sweep.safety import check_targets
from esc_sweep.tracking.uri import check_server, check_store, is_server, resolve_tracking_uri
from esc_sweep.training.callbacks import BuiltInBackground

log = logging.getLogger("esc_sweep")

register_configs()


def build_callbacks(cfg: DictConfig, first: threading.Thread | None = None) -> list:
    """The run's callbacks. Slow-to-import ones are built in the background, after ``first`` ends."""
    callbacks = []
    if cfg.tracking.enabled:
        uri = resolve_tracking_uri(cfg)
        if is_server(uri):
            check_server(uri)  # no server: say so now, not after the first epoch
        else:
            check_store(uri)  # a folder, a damaged or unwritable database: say so now

        def build_tracker():
            if first is not None:
                first.join()  # imports on the way to the first training step go first
            return _mlflow_tracker(cfg)

        # Importing MLflow takes 1-2 s: let it overlap loading the data and the first steps.
        callbacks.append(BuiltInBackground(build_tracker, name="mlflow"))
    if cfg.sweep.storage and cfg.sweep.trial_number is not None:
        from esc_sweep.sweep.reporter import TrialReporter  # deferred: optuna (~0.8 s), only in a sweep trial

        callbacks.append(TrialReporter(cfg))
    return callbacks


def _share_cores_between_trials(cfg: DictConfig) -> None:
    """Parallel folds inside trials that a launcher runs side by side: one thread per fold process.

    Without this, each of n_jobs trials would give each of its fold processes its share
    of *all* the cores, oversubscribing them n_jobs times. The thread count is set in the
    config (it decides the results bit for bit, so it is recorded with the run).
    """
    if cfg.trainer.parallel_folds <= 1 or cfg.trainer.num_threads is not None or not HydraConfig.initialized():
        return
    jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
    if isinstance(jobs, int) and jobs != 1:
        cfg.trainer.num_threads = 1
        log.info("%s trials at once with trainer.parallel_folds=%d: trainer.num_threads=1 per fold process",
                 jobs if jobs > 0 else "all-core", cfg.trainer.parallel_folds)


def _mlflow_tracker(cfg: DictConfig):
    from esc_sweep.tracking.cv_run import MlflowTracker  # deferred: MLflow (~8 s), built in the background

    return MlflowTracker(cfg)


def import_in_background(module: str) -> threading.Thread:
    """Import ``module`` in a daemon thread (an error is left for the importer that needs it to report)."""
    def work() -> None:
        try:
            importlib.import_module(module)
        except Exception:  # the training thread imports it again and reports the error
            pass

    thread = threading.Thread(target=work, name=f"esc_sweep-import-{module}", daemon=True)
    thread.start()
    return thread


def check_run(cfg: DictConfig):
    """Refuse a run that cannot work before any data is read: the config, the ``_target_`` allow-list,
    the teacher (``trainer.distill``) and a dry run of the model. Returns the dry run's ``DryRun`` record."""
    # deferred: torch and the trainer (~5 s): `esc-sweep --help` imports this module for Hydra's help
    from esc_sweep.training.distill import read_teacher
    from esc_sweep.training.dry_run import dry_run  # deferred: as above

    validate(cfg)
    check_targets(cfg)
    read_teacher(cfg)  # trainer.distill: a leaking or mismatched teacher is refused before any work
    return dry_run(cfg)  # before any data is read: a bad combination of values fails here, in a second


@dataclass
class RunStart:
    """What ``cross_validate`` gets from the app: callbacks (progress first) and the starting weights."""

    callbacks: list
    init: Any = None  # training.loop.InitWeights, read from model.init_from
    fold_models: Any = None  # bundle.ensemble.FoldModels when the fold models are kept for an ensemble bundle


def start_run(cfg: DictConfig, kept=None, first: threading.Thread | None = None) -> RunStart:
    """Everything the app sets up between ``check_run`` and the cross-validation (the benchmarks call it too).

    ``kept``: an ``app.resume.KeptWork`` to follow the run; ``first``: a thread (imports on the way
    to the first training step) the slow-to-import callbacks wait for.
    """
    init = None
    if cfg.model.init_from:
        from esc_sweep.bundle.format import read_init_weights  # deferred: the bundle code (~4 s), only with init_from

        init = read_init_weights(cfg.model.init_from)
    _share_cores_between_trials(cfg)
    callbacks = [TrainingProgress(cfg.trainer.progress, len(cfg.trainer.folds) * cfg.trainer.repeats),
                 *build_callbacks(cfg, first=first)]
    if kept is not None:
        callbacks.append(kept)
    fold_models = None
    # With a final fit, one fold model is no ensemble worth saving; asked for by name, even one fold is kept
    # (robustness.py --fold-members scores it on the fold it never saw).
    keep_folds = cfg.trainer.keep_fold_models or (cfg.trainer.final_fit and len(cfg.trainer.folds) > 1)
    if keep_folds and cfg.trainer.save_fold_ensemble:
        from esc_sweep.bundle.ensemble import FoldModels  # deferred: the bundle package, only with a final fit

        fold_models = FoldModels()  # CPU copies of the fold models, for the fold ensemble bundle
        callbacks.append(fold_models)
    return RunStart(callbacks, init, fold_models)


def run(cfg: DictConfig, kept=None) -> float:
    """Check, cross-validate, write results.json, save the bundles. Returns ``CVResult.objective``
    (what a sweep maximises: the inner split's mean accuracy with ``trainer.validation=inner``,
    else the test folds' mean accuracy); NaN after a dry run (``trainer.dry_run``).

    ``kept``: an ``app.resume.KeptWork`` to follow the run (what Ctrl-C leaves to resume).
    """
    # Building the first optimizer imports torch._dynamo (~1 s, for a decorator):
    # importing it now overlaps that with loading the data.
    warm_up = import_in_background("torch._dynamo")
    # deferred: torch and the trainer (~5 s): `esc-sweep --help` imports this module for Hydra's help
    from esc_sweep.app.report import print_results, write_results
    from esc_sweep.app.save_bundle import final_fit_and_save, save_fold_ensemble  # deferred: as above
    from esc_sweep.training.cv import cross_validate, mark_cv_complete  # deferred: as above

    proof = check_run(cfg)
    if cfg.trainer.dry_run:
        console.print(f"[bold green]dry run passed[/]: {cfg.model.name} ({proof.num_parameters:,} parameters) on "
                      f"{proof.device}, input {proof.feature_shape} (training {proof.train_shape}), "
                      f"{proof.num_classes} classes; no data was read")
        return float("nan")
    start = start_run(cfg, kept, first=warm_up)
    cv = cross_validate(cfg, start.callbacks, init=start.init, mark_complete=False)
    print_results(cv)  # stdout; progress and errors go to stderr
    output_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()
    # Bundles are also logged to the MLflow run of this cross-validation; results.json names it.
    run_id = next((cb.parent_run_id for cb in start.callbacks if getattr(cb, "parent_run_id", None)), None)
    path = write_results(cv, output_dir, {"mlflow_run_id": run_id} if run_id else None)
    log.info("results written to %s", path)
    if cfg.trainer.final_fit:
        final_fit_and_save(cfg, cv, output_dir, run_id=run_id, init=start.init)
    if start.fold_models is not None:
        save_fold_ensemble(cfg, cv, start.fold_models, output_dir, run_id=run_id)
    # Only now is the run complete: until here a crash or kill leaves every finished fold resumable.
    mark_cv_complete(cv, cfg)
    return cv.objective


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    kept = KeptWork(cfg, current_output_dir())
    try:
        return run(cfg, kept)
    except EscSweepError as err:
        if _in_multirun():
            raise  # the sweeper records the trial as failed, with this message
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        sys.exit(2)
    except KeyboardInterrupt:
        if _in_multirun():
            raise
        console.print(f"[bold yellow]interrupted:[/] {escape(kept.interrupt_message())}")
        sys.exit(130)
