"""Saving what a run trained as bundles: the final fit's model, the fold models as an ensemble.

``app.train.run`` calls these after the cross-validation. Each bundle is saved under the
run's output folder, loaded back once (proof that the saved files work) and, when the run
is tracked, logged to its MLflow run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from esc_sweep.app.progress import TrainingProgress
from esc_sweep.console import console
from esc_sweep.tracking.artifacts import log_folder  # imports MLflow itself, only when called
from esc_sweep.tracking.uri import resolve_tracking_uri

log = logging.getLogger("esc_sweep")


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
