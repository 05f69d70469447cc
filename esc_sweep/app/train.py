"""The Hydra application: ``python -m esc_sweep [overrides]``.

Composes the config, validates it, runs the cross-validation with tracking,
prints the results and returns the mean validation accuracy (the objective a
sweep maximises).
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
from omegaconf import DictConfig
from rich.markup import escape

from esc_sweep.config import register_configs, validate
from esc_sweep.errors import EscSweepError
from esc_sweep.paths import CONFIG_DIR
from esc_sweep.console import console

log = logging.getLogger("esc_sweep")

register_configs()


def build_callbacks(cfg: DictConfig, first: threading.Thread | None = None) -> list:
    """The run's callbacks. Slow-to-import ones are built in the background, after ``first`` ends."""
    from esc_sweep.training.callbacks import BuiltInBackground

    callbacks = []
    if cfg.tracking.enabled:
        from esc_sweep.tracking.uri import check_server, check_store, is_server, resolve_tracking_uri

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
        from esc_sweep.sweep.reporter import TrialReporter

        callbacks.append(TrialReporter(cfg))
    return callbacks


def _mlflow_tracker(cfg: DictConfig):
    from esc_sweep.tracking.cv_run import MlflowTracker

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


def run(cfg: DictConfig) -> float:
    """Validate, dry-run, cross-validate, report. Returns the objective (``CVResult.objective``)."""
    # Building the first optimizer imports torch._dynamo (~1 s, for a decorator):
    # importing it now overlaps that with loading the data.
    warm_up = _import_in_background("torch._dynamo")
    from esc_sweep.app.progress import TrainingProgress
    from esc_sweep.app.report import print_results, write_results
    from esc_sweep.safety import check_targets
    from esc_sweep.training.cv import cross_validate, mark_cv_complete

    from esc_sweep.training.dry_run import dry_run

    validate(cfg)
    check_targets(cfg)
    proof = dry_run(cfg)  # before any data is read: a bad combination of values fails here, in a second
    if cfg.trainer.dry_run:
        console.print(f"[bold green]dry run passed[/]: {cfg.model.name} ({proof.num_parameters:,} parameters) on "
                      f"{proof.device}, input {proof.feature_shape} (training {proof.train_shape}), "
                      f"{proof.num_classes} classes; no data was read")
        return float("nan")
    init = None
    if cfg.model.init_from:
        from esc_sweep.bundle.format import read_init_weights

        init = read_init_weights(cfg.model.init_from)
    callbacks = build_callbacks(cfg, first=warm_up)
    progress = TrainingProgress(cfg.trainer.progress, len(cfg.trainer.folds))
    cv = cross_validate(cfg, [progress, *callbacks], init=init, mark_complete=False)
    print_results(cv)  # stdout; progress and errors go to stderr
    output_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()
    path = write_results(cv, output_dir)
    log.info("results written to %s", path)
    if cfg.trainer.final_fit:
        # The bundle is also logged to the MLflow run of this cross-validation.
        run_id = next((cb.parent_run_id for cb in callbacks if getattr(cb, "parent_run_id", None)), None)
        final_fit_and_save(cfg, cv, output_dir, run_id=run_id, init=init)
    # Only now is the run complete: until here a crash or kill leaves every finished fold resumable.
    mark_cv_complete(cv, cfg)
    # A sweep maximises this: the inner split's score with trainer.validation=inner (honest), else the test folds'.
    return cv.objective


def final_fit_and_save(cfg: DictConfig, cv, output_dir: Path, run_id: str | None = None, init=None) -> Path:
    """Train on every clip, save the bundle to ``output_dir/bundle``, log it and its plots, draw the plots."""
    from esc_sweep.app.plots import TRAINING_CLIPS_NOTE, log_plots, make_plots
    from esc_sweep.app.progress import TrainingProgress
    from esc_sweep.bundle import load_bundle, save_bundle
    from esc_sweep.bundle.format import BUNDLE_DIR
    from esc_sweep.training.final_fit import final_fit, final_fit_config

    epochs = final_fit_config(cfg, cv).trainer.epochs
    console.print(f"[bold]final fit[/]: training on all clips for {epochs} epochs")
    fitted = final_fit(cfg, cv, [TrainingProgress(cfg.trainer.progress, 0)], init=init)
    log_to_run = bool(cfg.tracking.enabled and run_id)
    path = save_bundle(Path(output_dir) / BUNDLE_DIR, fitted.model, fitted.config, fitted.clips.class_names, cv,
                       fitted.training, run_id=run_id if log_to_run else None)
    console.print(f"[bold green]bundle saved[/] to {path}")
    if log_to_run:
        from esc_sweep.tracking.artifacts import log_folder
        from esc_sweep.tracking.uri import resolve_tracking_uri

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
        from esc_sweep.tracking.uri import resolve_tracking_uri

        log_plots(plots, run_id, resolve_tracking_uri(cfg))
    console.print(f"{len(plots)} plots written to {Path(output_dir) / 'plots'}")
    return path


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    except EscSweepError as err:
        if _in_multirun():
            raise  # the sweeper records the trial as failed, with this message
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        sys.exit(2)
    except KeyboardInterrupt:
        if _in_multirun():
            raise
        console.print("[bold yellow]interrupted:[/] finished folds are kept; run the same command again to resume.")
        sys.exit(130)
