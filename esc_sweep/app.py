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
from esc_sweep.progress import console

log = logging.getLogger("esc_sweep")

register_configs()


def build_callbacks(cfg: DictConfig, first: threading.Thread | None = None) -> list:
    """The run's callbacks. Slow-to-import ones are built in the background, after ``first`` ends."""
    from esc_sweep.callbacks import BuiltInBackground

    callbacks = []
    if cfg.tracking.enabled:
        from esc_sweep.tracking_uri import check_server, is_server, resolve_tracking_uri

        uri = resolve_tracking_uri(cfg)
        if is_server(uri):
            check_server(uri)  # no server: say so now, not after the first epoch

        def build_tracker():
            if first is not None:
                first.join()  # imports on the way to the first training step go first
            return _mlflow_tracker(cfg)

        # Importing MLflow takes 1-2 s: let it overlap loading the data and the first steps.
        callbacks.append(BuiltInBackground(build_tracker, name="mlflow"))
    if cfg.sweep.storage and cfg.sweep.trial_number is not None:
        from esc_sweep.sweep_reporter import TrialReporter

        callbacks.append(TrialReporter(cfg))
    return callbacks


def _mlflow_tracker(cfg: DictConfig):
    from esc_sweep.tracking import MlflowTracker

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
    """Validate, cross-validate, report. Returns mean validation accuracy."""
    # Building the first optimizer imports torch._dynamo (~1 s, for a decorator):
    # importing it now overlaps that with loading the data.
    warm_up = _import_in_background("torch._dynamo")
    from esc_sweep.report import print_results, write_results
    from esc_sweep.safety import check_targets
    from esc_sweep.trainer import cross_validate

    validate(cfg)
    check_targets(cfg)
    callbacks = build_callbacks(cfg, first=warm_up)
    cv = cross_validate(cfg, callbacks)
    print_results(cv)  # stdout; progress and errors go to stderr
    output_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()
    path = write_results(cv, output_dir)
    log.info("results written to %s", path)
    if cfg.trainer.final_fit:
        from esc_sweep.bundle import final_fit

        # The bundle is also logged to the MLflow run of this cross-validation.
        run_id = next((cb.parent_run_id for cb in callbacks if getattr(cb, "parent_run_id", None)), None)
        final_fit(cfg, cv, output_dir, run_id=run_id)
    return cv.mean_val_acc


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
