"""The trial's side of an Optuna sweep: report progress, stop when pruned.

The esc_optuna sweeper (hydra_plugins/esc_sweep_sweeper) creates each trial
in a shared study storage and passes the job ``sweep.storage``,
``sweep.study_name`` and ``sweep.trial_number``. ``TrialReporter`` is the
trainer callback that reports the running mean of what the trial's objective
averages (the test folds' accuracy, or the inner split's with
``trainer.validation=inner``) after each fold (and, with ``sweep.report_epochs``, after each epoch of
the first fold) and raises ``optuna.TrialPruned`` when the study's pruner
says the trial is not worth finishing. The sweeper then records it as PRUNED.

Steps: fold k ends at step k. With ``report_epochs`` the epochs of the first
fold are steps 1..999 and fold k ends at step 1000*k, so every trial reports
its folds at the same steps whatever its number of epochs (pruners compare
trials step by step).
"""

from __future__ import annotations

import statistics
from typing import Any, Mapping

import optuna
from omegaconf import DictConfig, OmegaConf

from esc_sweep.training.callbacks import Callback
from esc_sweep.errors import ConfigError
from esc_sweep.sweep import optuna_private
from esc_sweep.sweep.identity import DATA_FINGERPRINT_ATTR
from esc_sweep.sweep.storage import open_storage

# Steps per fold when epochs are reported too (see the module docstring).
EPOCH_STRIDE = 1000

PRUNERS = ("median", "successive_halving", "hyperband", "none")

# One storage (one connection pool) per URL and process: with Hydra's basic
# launcher every trial runs in the sweeper's process.
_STORAGES: dict[str, optuna.storages.BaseStorage] = {}


def get_storage(url: str) -> optuna.storages.BaseStorage:
    if url not in _STORAGES:
        _STORAGES[url] = open_storage(url)
    return _STORAGES[url]


def build_pruner(spec: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    """The pruner named by the sweeper's ``pruner`` config (median by default)."""
    spec = dict(spec or {})
    name = spec.get("name", "median")
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(spec.get("n_startup_trials", 3)),
            n_warmup_steps=int(spec.get("n_warmup_steps", 0)),
        )
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=_resource(spec.get("min_resource", 1)),
            reduction_factor=int(spec.get("reduction_factor", 3)),
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=_resource(spec.get("min_resource", 1)),
            max_resource=_resource(spec.get("max_resource", "auto")),
            reduction_factor=int(spec.get("reduction_factor", 3)),
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"hydra.sweeper.pruner.name={name!r}: must be one of {', '.join(PRUNERS)}")


def _resource(value: Any) -> int | str:
    return value if value == "auto" else int(value)


def _pruner_spec_from_hydra() -> Mapping[str, Any] | None:
    """The pruner config of the sweeper that launched this job, when Hydra runs it."""
    from hydra.core.hydra_config import HydraConfig  # deferred: hydra (~0.2 s), only inside a Hydra job

    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().sweeper
    return sweeper.get("pruner") if isinstance(sweeper, DictConfig) else None


class TrialReporter(Callback):
    """Reports a cross-validation's progress to its Optuna trial; raises TrialPruned."""

    def __init__(self, cfg: DictConfig, pruner: optuna.pruners.BasePruner | None = None):
        sweep = cfg.sweep
        storage = get_storage(sweep.storage)
        self.study = optuna.load_study(
            study_name=sweep.study_name,
            storage=storage,
            # The sweeper samples; here the sampler is only consulted (cheaply) when
            # the Trial object is made.
            sampler=optuna.samplers.RandomSampler(),
            pruner=pruner or build_pruner(_pruner_spec_from_hydra()),
        )
        trial_id = storage.get_trial_id_from_study_id_trial_number(optuna_private.study_id(self.study),
                                                                   int(sweep.trial_number))
        self.trial = optuna.Trial(self.study, trial_id)
        # Optuna's pruners (and Trial.report) handle single-objective studies only.
        self.can_prune = len(self.study.directions) == 1
        self.report_epochs = bool(sweep.report_epochs)
        self.first_fold = list(cfg.trainer.folds)[0]
        self.fold_accs: list[float] = []  # what the objective averages (inner accuracy with validation=inner)
        self.test_accs: list[float] = []
        self.fold_values: dict[str, float] = {}  # "r<repeat>f<fold>" -> the objective's value on it
        self.validation = str(OmegaConf.select(cfg, "trainer.validation", default="none"))
        # trainer.objective: what the objective averages and the pruner sees, accuracy or MAP@3.
        self.metric = "map3" if str(OmegaConf.select(cfg, "trainer.objective", default="acc")) == "map3" else "acc"
        self.epochs_trained = 0

    # --- callback hooks -------------------------------------------------------

    def on_cv_start(self, context: dict[str, Any]) -> None:
        """Every trial of a study reads the same data: the first records its fingerprint, the others check it.

        The study's settings (sweep/identity.py) name where the data comes from; this catches
        the files themselves changing under the same path between trials or resumes.
        """
        # The study report compares trials paired by fold; the correction needs the data's fold count.
        clips = context["clips"]
        holdout = getattr(clips, "protocol", "cv") == "holdout"  # one test split (its training clips are "fold 0")
        self.trial.set_user_attr("dataset_folds", 1 if holdout else int(clips.folds.unique().numel()))
        fingerprint = str(context["clips"].fingerprint)
        recorded = self.study.user_attrs.get(DATA_FINGERPRINT_ATTR)
        if recorded is None:
            self.study.set_user_attr(DATA_FINGERPRINT_ATTR, fingerprint)
        elif recorded != fingerprint:
            raise ConfigError(
                f"the data changed: study {self.study.study_name!r} was run on data with fingerprint {recorded}, "
                f"this trial read {fingerprint} (other files or contents under the same dataset.root); "
                "its trials would not be comparable: start another study (hydra.sweeper.study_name=<new name>)"
            )

    def on_fold_start(self, fold: int, context: dict[str, Any]) -> None:
        if "num_parameters" not in self.trial.user_attrs:
            # For multi-objective searches (accuracy vs size).
            self.trial.set_user_attr("num_parameters", int(context["num_parameters"]))

    def on_epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs_trained += 1
        if self.report_epochs and fold == self.first_fold and not self.fold_accs and epoch < EPOCH_STRIDE:
            # Pruning decides on the inner split with trainer.validation=inner: the test fold is only scored.
            score = metrics.get(f"inner_{self.metric}") if self.validation == "inner" else metrics[f"val_{self.metric}"]
            if score is not None:
                self._report(score, epoch, f"fold {fold}, epoch {epoch}")

    def on_fold_end(self, result, resumed: bool = False) -> None:
        inner = getattr(result, f"inner_{self.metric}", None)
        self.fold_accs.append(inner if self.validation == "inner" and inner is not None
                              else getattr(result, f"val_{self.metric}"))
        self.test_accs.append(result.val_acc)
        # What the objective averages, per (repeat, fold): the study report tells noise from signal with it.
        self.fold_values[f"r{getattr(result, 'repeat', 0)}f{result.fold}"] = self.fold_accs[-1]
        self.trial.set_user_attr("fold_values", dict(self.fold_values))
        # Beside the objective, each trial keeps its test-fold accuracy (the honest estimate with inner).
        self.trial.set_user_attr("test_fold_acc_mean", statistics.fmean(self.test_accs))
        self.trial.set_user_attr("epochs_trained", self.epochs_trained)
        folds_done = len(self.fold_accs)
        # The spread over folds of what the objective averages, for the sweeper's "trial N COMPLETE" line.
        self.trial.set_user_attr("folds_done", folds_done)
        if folds_done > 1:
            self.trial.set_user_attr("objective_std", statistics.stdev(self.fold_accs))
        step = folds_done * (EPOCH_STRIDE if self.report_epochs else 1)
        self._report(statistics.fmean(self.fold_accs), step, f"{folds_done} fold(s)")

    def on_exception(self, error: BaseException) -> None:
        # Epochs spent on a fold that did not finish count too (cost accounting).
        try:
            self.trial.set_user_attr("epochs_trained", self.epochs_trained)
        except Exception:  # the storage may be the reason we are failing
            pass

    # --------------------------------------------------------------------------

    def _report(self, value: float, step: int, where: str) -> None:
        if not self.can_prune:
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            # What was reported: the inner split's score with trainer.validation=inner, else the test folds'.
            what = f"mean {'inner' if self.validation == 'inner' else 'val'} {self.metric}"
            raise optuna.TrialPruned(f"pruned after {where}: {what} {value:.4f} at step {step}")
