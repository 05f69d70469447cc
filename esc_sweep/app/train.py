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
from pathlib import Path

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
from esc_sweep.tracking.artifacts import log_folder  # imports MLflow itself, only when called
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


def _import_in_background(module: str) -> threading.Thread:
    def work() -> None:
        try:
            importlib.import_module(module)
        except Exception:  # the training thread imports it again and reports the error
            pass

    thread = threading.Thread(target=work, name=f"esc_sweep-import-{module}", daemon=True)
    thread.start()
    return thread


def run(cfg: DictConfig, kept=None) -> float:
    """Validate, dry-run, cross-validate, report. Returns the objective (``CVResult.objective``).

    ``kept``: an ``app.resume.KeptWork`` to follow the run (what Ctrl-C leaves to resume).
    """
    # Building the first optimizer imports torch._dynamo (~1 s, for a decorator):
    # importing it now overlaps that with loading the data.
    warm_up = _import_in_background("torch._dynamo")
    # deferred: torch and the trainer (~5 s): `esc-sweep --help` imports this module for Hydra's help
    from esc_sweep.app.report import print_results, write_results
    from esc_sweep.training.cv import cross_validate, mark_cv_complete  # deferred: as above
    from esc_sweep.training.dry_run import dry_run  # deferred: as above
    from esc_sweep.training.distill import read_teacher  # deferred: as above

    validate(cfg)
    check_targets(cfg)
    read_teacher(cfg)  # trainer.distill: a leaking or mismatched teacher is refused before any work
    proof = dry_run(cfg)  # before any data is read: a bad combination of values fails here, in a second
    if cfg.trainer.dry_run:
        console.print(f"[bold green]dry run passed[/]: {cfg.model.name} ({proof.num_parameters:,} parameters) on "
                      f"{proof.device}, input {proof.feature_shape} (training {proof.train_shape}), "
                      f"{proof.num_classes} classes; no data was read")
        return float("nan")
    init = None
    if cfg.model.init_from:
        from esc_sweep.bundle.format import read_init_weights  # deferred: the bundle code (~4 s), only with init_from

        init = read_init_weights(cfg.model.init_from)
    _share_cores_between_trials(cfg)
    callbacks = build_callbacks(cfg, first=warm_up)
    progress = TrainingProgress(cfg.trainer.progress, len(cfg.trainer.folds) * cfg.trainer.repeats)
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
    cv = cross_validate(cfg, [progress, *callbacks], init=init, mark_complete=False)
    print_results(cv)  # stdout; progress and errors go to stderr
    output_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()
    # Bundles are also logged to the MLflow run of this cross-validation; results.json names it.
    run_id = next((cb.parent_run_id for cb in callbacks if getattr(cb, "parent_run_id", None)), None)
    path = write_results(cv, output_dir, {"mlflow_run_id": run_id} if run_id else None)
    log.info("results written to %s", path)
    if cfg.trainer.final_fit:
        final_fit_and_save(cfg, cv, output_dir, run_id=run_id, init=init)
    if fold_models is not None:
        save_fold_ensemble(cfg, cv, fold_models, output_dir, run_id=run_id)
    # Only now is the run complete: until here a crash or kill leaves every finished fold resumable.
    mark_cv_complete(cv, cfg)
    # A sweep maximises this: the inner split's score with trainer.validation=inner (honest), else the test folds'.
    return cv.objective


def final_fit_and_save(cfg: DictConfig, cv, output_dir: Path, run_id: str | None = None, init=None) -> Path:
    """Train on every clip, save the bundle to ``output_dir/bundle``, log it and its plots, draw the plots."""
    # deferred: plots (matplotlib, ~1.9 s) and the bundle code, only with trainer.final_fit=true
    from esc_sweep.app.plots import TRAINING_CLIPS_NOTE, log_plots, make_plots
    from esc_sweep.bundle import load_bundle, save_bundle  # deferred: as above
    from esc_sweep.bundle.format import BUNDLE_DIR  # deferred: as above
    from esc_sweep.training.final_fit import final_fit, final_fit_config  # deferred: as above

    epochs = final_fit_config(cfg, cv).trainer.epochs
    console.print(f"[bold]final fit[/]: training on all clips for {epochs} epochs")
    fitted = final_fit(cfg, cv, [TrainingProgress(cfg.trainer.progress, 0)], init=init)
    log_to_run = bool(cfg.tracking.enabled and run_id)
    path = save_bundle(Path(output_dir) / BUNDLE_DIR, fitted.model, fitted.config, fitted.clips.class_names, cv,
                       fitted.training, run_id=run_id if log_to_run else None)
    console.print(f"[bold green]bundle saved[/] to {path}")
    if log_to_run:
        # The tracker has ended the CV run by now; artifacts and metrics can still be added.
        log_folder(resolve_tracking_uri(cfg), run_id, path, BUNDLE_DIR,
                   {f"final_fit_{k}": fitted.training.get(k) for k in ("train_acc", "train_loss", "seconds")})
        console.print(f"bundle logged to MLflow run {run_id} (artifact '{BUNDLE_DIR}/')")
    elif cfg.tracking.enabled:
        log.warning("tracking is on but no MLflow run id is known: the bundle was saved to disk only")

    # Pictures of the data, the bundle's predictions and the CV results. The
    # bundle is reloaded from disk, which also proves the saved files work.
    bundle = load_bundle(path, device=fitted.device)
    plots = make_plots(
        Path(output_dir) / "plots", class_names=fitted.clips.class_names,
        cv=cv.to_dict() if cv is not None else None, clips=fitted.clips, bundle=bundle,
        predictions_note=TRAINING_CLIPS_NOTE,
    )
    if log_to_run:
        log_plots(plots, run_id, resolve_tracking_uri(cfg))
    console.print(f"{len(plots)} plots written to {Path(output_dir) / 'plots'}")
    return path


def save_fold_ensemble(cfg: DictConfig, cv, fold_models, output_dir: Path, run_id: str | None = None) -> Path | None:
    """Save the CV's fold models as one bundle (``output_dir/bundle_ensemble``) and log it to the run.

    No honest score comes with it: every fold was in some member's training set. It can be
    scored only on clips outside all the members' training folds (bundle.json lists them).
    """
    from esc_sweep.bundle import load_bundle  # deferred: the bundle code, only with a final fit
    from esc_sweep.bundle.format import ENSEMBLE_DIR, save_ensemble_bundle  # deferred: as above

    if fold_models.missing:
        log.warning("fold ensemble: fold(s) %s were restored from checkpoints, their models were not kept; "
                    "the ensemble holds folds %s", fold_models.missing, sorted(fold_models.states))
    # trainer.keep_fold_models keeps even one fold model (scored on its own held-out fold); a final fit's
    # companion ensemble needs two.
    needed = 1 if cfg.trainer.keep_fold_models else 2
    if len(fold_models.states) < needed:
        log.warning("fold ensemble not saved: fewer than %d fold models were trained in this run", needed)
        return None
    log_to_run = bool(cfg.tracking.enabled and run_id)
    path = save_ensemble_bundle(Path(output_dir) / ENSEMBLE_DIR, fold_models.states, cfg, cv.class_names, cv,
                                run_id=run_id if log_to_run else None)
    load_bundle(path)  # proves the saved files load
    count = len(fold_models.states)
    console.print(f"[bold green]fold ensemble saved[/] to {path} ({count} fold model{'s' if count != 1 else ''}, "
                  f"predict averages them)")
    if log_to_run:
        log_folder(resolve_tracking_uri(cfg), run_id, path, ENSEMBLE_DIR)
        console.print(f"fold ensemble logged to MLflow run {run_id} (artifact '{ENSEMBLE_DIR}/')")
    return path


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
