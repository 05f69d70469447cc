"""The CV run and its fold runs: every cross-validation leaves a complete record in MLflow.

Run layout in the experiment ``tracking.experiment_name``::

    study run   (sweeps only; tag esc_sweep.study=<study name>, one per Optuna study)
    └── CV run  (one per cross-validation = one per trial; tag esc_sweep.trial=<n> in a sweep)
        └── fold run  (one per fold; tag fold=<n>)

The CV run holds the resolved config (params and config.yaml), the run's
environment (device, library versions, dataset fingerprint, git commit), the
aggregates over folds (``cv_val_acc_mean``, ...) and the same values per fold
(``val_acc`` etc. with ``step`` = fold number), the pooled confusion matrix
(PNG and HTML), the most confused class pairs, a per-class accuracy table and
the learning curves of all folds. A fold run holds per-epoch curves (``step``
= epoch), the fold's final values, its confusion matrix, learning curve,
``results.json`` and, with ``tracking.log_models=true``, the trained weights.

Both carry the labels of ``esc_sweep.tracking.labels`` (the real model name,
the dataset and its fingerprint, classes, folds, selection protocol, recipe
and the comparability key ``esc_sweep.compare_key``); the CV run is named from
them (``resnet18 · esc50[5 classes] · 5 folds · 30 ep``), and at its end by its
accuracy first (``76.8 % ±4.6 · resnet18 · ...``). Metric values are logged rounded
to 7 significant digits (``client.display_value``).

The default store is a SQLite database in ``<cwd>/mlruns/mlflow.db`` with
artifacts in ``<cwd>/mlruns/artifacts``; ``tracking.uri`` or
``$MLFLOW_TRACKING_URI`` select another store or a tracking server.

Everything goes through ``MlflowClient`` with explicit run ids, never the
fluent active-run stack: several runs are open at once (CV and fold run), and
sweeps run many trials in one process.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunStatus
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from esc_sweep.errors import TrackingError
from esc_sweep.paths import original_cwd
from esc_sweep.tracking.uri import resolve_tracking_uri
from esc_sweep.training.callbacks import Callback
from esc_sweep.training.results import CVResult, FoldResult

log = logging.getLogger("esc_sweep.tracking")
from esc_sweep.tracking.client import (  # noqa: F401 (tag names are part of the tracking API)
    RUNS_VIEW_KEY,
    MAX_PARAM_LENGTH,
    ERROR_TAG,
    FOLD_TAG,
    REPEAT_TAG,
    NOTE_TAG,
    PARENT_TAG,
    PRUNED_SUFFIX,
    PRUNED_TAG,
    ROLE_TAG,
    STATE_KEY,
    STATUS_TAG,
    TRIAL_TAG,
    mlflow_client,
    default_artifact_location,
    get_or_create_experiment,
    log_figure,
    log_metrics,
    log_params,
    log_tags,
    now_ms,
    source_tags,
    display_value,
    git_commit,
)
from esc_sweep.tracking.labels import (
    DATASET_LABEL_TAG,
    EPOCHS_TAG,
    FINGERPRINT_TAG,
    FOLDS_TAG,
    SELECTION_TAG,
    finished_run_name,
    folds_phrase,
    run_labels,
    run_name,
)
from esc_sweep.tracking.uri import is_server
from esc_sweep.tracking.system_metrics import start_system_metrics, system_run

# Per-fold values the CV run logs with step = fold number, beside their means (cv_<key>_mean).
# inner_acc: only with trainer.validation=inner; val_acc_tta: only with trainer.tta_crops > 1.
# val_map3: mean average precision at 3 (FSDKaggle2018's metric).
PER_FOLD_KEYS = ("val_acc", "train_acc", "gap", "val_f1", "val_loss", "train_loss", "inner_acc", "val_acc_tta",
                 "val_map3")
TOP_CONFUSED_PAIRS = 20
# --------------------------------------------------------------------------
# Params and tags


def flatten_config(cfg: Any) -> dict[str, str]:
    """The resolved config as ``{"optimizer.lr": "0.001", ...}``; unset ``sweep.*`` keys are left out."""
    container = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    flat: dict[str, str] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                walk(value, dotted + ".")
            elif not (dotted.startswith("sweep.") and value is None):
                flat[dotted] = str(value)[:MAX_PARAM_LENGTH]

    walk(container, "")
    return flat


def _hydra_overrides() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig  # deferred: hydra (~0.6 s), only inside a Hydra job

        if HydraConfig.initialized():
            return " ".join(HydraConfig.get().overrides.task)
    except Exception:
        pass
    return None


def _version(package: str) -> str:
    # From the installed metadata: importing timm just for its version costs seconds.
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _environment_params(context: Mapping[str, Any]) -> dict[str, str]:
    device = context["device"]
    clips = context["clips"]
    params = {
        "device": str(device),
        "torch_version": torch.__version__,
        "torchaudio_version": _version("torchaudio"),
        "timm_version": _version("timm"),
        "mlflow_version": mlflow.__version__,
        "python_version": platform.python_version(),
        "dataset_fingerprint": str(clips.fingerprint),
        "num_clips": str(len(clips.targets)),
        "num_classes": str(len(clips.class_names)),
    }
    if context.get("feature_shape"):
        params["feature_shape"] = "x".join(map(str, context["feature_shape"]))
    if getattr(device, "type", None) == "cuda":
        params["device_name"] = torch.cuda.get_device_name(device)
    # The user's project first; else the esc_sweep checkout that is running.
    commit = git_commit(original_cwd(), Path(__file__).resolve().parent)
    if commit:
        params["git_commit"] = commit
    return params


def _numeric(values: Mapping[str, Any], skip: Iterable[str] = ("epoch",)) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


# --------------------------------------------------------------------------
# The callback


def runs_table_path(experiment_id: str) -> str:
    """The UI route of an experiment's runs table, in the "Model training" view, esc_sweep's landing view.

    MLflow 3.17's UI opens every experiment in its GenAI view (traces) unless the URL
    asks for the machine-learning one; the experiment-kind tag alone is not enough.
    ``viewStateShareKey`` opens the view saved on the experiment (``client.runs_view_state``):
    sorted by mean accuracy, with its interval and the columns that tell runs apart.
    """
    return f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW_KEY}"


def runs_table_link(tracking_uri: str, experiment_id: str) -> str:
    """Where to see the runs: the full URL on a tracking server, else how to open the local store."""
    path = runs_table_path(experiment_id)
    if is_server(tracking_uri):
        return tracking_uri.rstrip("/") + path
    return (f"mlflow ui --backend-store-uri {tracking_uri}, then open http://127.0.0.1:5000{path}")


def dataset_input(labels: Mapping[str, str]) -> DatasetInput:
    """The run's data as an MLflow dataset input: the runs table's (default) Dataset column shows
    ``esc50[5 classes]`` with the data copy's fingerprint, and as its context folds, epochs and selection."""
    name = labels.get(DATASET_LABEL_TAG) or labels.get("dataset", "?")
    source = json.dumps({"dataset": labels.get("dataset"), "classes": labels.get("esc_sweep.classes"),
                         "folds": labels.get(FOLDS_TAG)})
    context = (f"{folds_phrase(labels[FOLDS_TAG])} · {labels.get(EPOCHS_TAG, '?')} ep · "
               f"selection {labels.get(SELECTION_TAG)}")
    dataset = Dataset(name=name, digest=str(labels.get(FINGERPRINT_TAG, ""))[:36], source_type="local", source=source)
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


class MlflowTracker(Callback):
    """Logs a cross-validation to MLflow: one CV run, one child run per fold.

    After ``on_cv_start``, ``parent_run_id`` is the CV run's id, so later steps
    (the final fit's bundle and plots, ``app.save_bundle``) log to the same run
    through ``tracking.artifacts.log_folder``.
    """

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.tracking_uri = resolve_tracking_uri(cfg)
        self.client: MlflowClient | None = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._parent_open = False
        self._resumed = False
        self._parent_params: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._class_names: list[str] = []
        self._fold_runs: dict[int, str] = {}  # open fold runs (of the current repeat)
        self._logged: dict[int, set[tuple[str, int]]] = {}  # (metric, epoch) already sent per fold
        self._earlier_fold_runs: dict[tuple[int, int], list] = {}  # (repeat, fold): runs of an interrupted attempt
        self._repeat = 0  # the repeat in training (trainer.repeats); fold runs of repeat r > 0 are tagged so
        self._repeats = 1
        self._model: torch.nn.Module | None = None
        self._num_parameters: int | None = None
        self._system_metrics = None  # CPU/memory/GPU sampler of the CV run (tracking.system_metrics)
        self._system_run_id: str | None = None  # the CV run's "system metrics" child, which it logs to

    # ---- CV start: open (or reopen) the CV run

    def on_cv_start(self, context: dict[str, Any]) -> None:
        # The app builds this tracker with esc_sweep.training.callbacks.BuiltInBackground, so
        # this usually runs on that thread, not on the training thread.
        try:
            self._start(context)
        except MlflowException as err:
            self.on_exception(err)
            raise TrackingError(f"MLflow tracking at {self.tracking_uri} failed: {err.message}") from err
        except (OSError, ImportError) as err:
            self.on_exception(err)
            raise
        except Exception as err:  # the store's own errors (SQLAlchemy, a damaged or locked database)
            self.on_exception(err)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise TrackingError(f"MLflow store {self.tracking_uri} cannot be used ({type(err).__name__}: "
                                f"{first}); fix tracking.uri / $MLFLOW_TRACKING_URI") from err
        except BaseException as err:
            self.on_exception(err)
            raise

    def _start(self, context: dict[str, Any]) -> None:
        cfg = self.cfg
        self.client = mlflow_client(self.tracking_uri)
        self.experiment_id = get_or_create_experiment(
            self.client, cfg.tracking.experiment_name, default_artifact_location(self.tracking_uri)
        )
        clips = context["clips"]
        self._repeats = int(context.get("repeats", 1))
        self._class_names = list(clips.class_names)
        self._tags = run_labels(cfg, self._class_names, clips.fingerprint)
        checkpoints = context.get("checkpoints")

        environment = _environment_params(context)
        run = self._resumable_run(checkpoints.state.get(STATE_KEY) if checkpoints else None)
        if run is not None:
            self.parent_run_id = run.info.run_id
            self._parent_params = dict(run.data.params)
            self._resumed = True
            # Named anew: the folds (and so the name) may differ from the interrupted attempt's.
            self.client.update_run(self.parent_run_id, status="RUNNING",
                                   name=cfg.tracking.run_name or run_name(self._tags, cfg.sweep.trial_number))
            self.client.set_tag(self.parent_run_id, "esc_sweep.resumed", "true")
            log_tags(self.client, self.parent_run_id, self._tags)  # a run from an older esc_sweep gets them too
            for child in self._children(self.parent_run_id):
                fold = child.data.tags.get(FOLD_TAG)
                repeat = child.data.tags.get(REPEAT_TAG, "0")
                if fold and fold.isdigit() and repeat.isdigit():
                    self._earlier_fold_runs.setdefault((int(repeat), int(fold)), []).append(child)
            log.info("MLflow: resuming run %s", self.parent_run_id)
        else:
            self.parent_run_id = self._create_parent(environment.get("git_commit"))
        self._parent_open = True
        if OmegaConf.select(cfg, "tracking.system_metrics", default=True):
            # A child run holds them: on the CV run they would be its first metrics (see system_metrics.py).
            self._system_run_id = system_run(self.client, self.experiment_id, self.parent_run_id, source_tags())
            self._system_metrics = start_system_metrics(self._system_run_id, self.tracking_uri, True,
                                                        resume=self._resumed)
        if checkpoints is not None:
            checkpoints.update_state(**{STATE_KEY: self.parent_run_id})

        self._log_parent_params({**flatten_config(cfg), **environment})
        self.client.log_text(self.parent_run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        if not self._resumed:
            self.client.log_inputs(self.parent_run_id, datasets=[dataset_input(self._tags)])

    def _create_parent(self, commit: str | None) -> str:
        cfg = self.cfg
        tags = {ROLE_TAG: "cv", **self._tags, **source_tags()}
        if cfg.sweep.parent_run_id:
            tags[PARENT_TAG] = cfg.sweep.parent_run_id
        if cfg.sweep.trial_number is not None:
            tags[TRIAL_TAG] = str(cfg.sweep.trial_number)
        if cfg.sweep.study_name:
            tags["esc_sweep.study_name"] = cfg.sweep.study_name
        overrides = _hydra_overrides()
        if overrides is not None:
            tags["esc_sweep.overrides"] = overrides
        if commit:
            tags["mlflow.source.git.commit"] = commit
        name = cfg.tracking.run_name or run_name(self._tags, cfg.sweep.trial_number)
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        return run.info.run_id

    def _resumable_run(self, run_id: str | None):
        """The CV run an interrupted identical command left, if it is in this store and experiment."""
        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None  # another store (tracking.uri changed) or deleted for good
        same_parent = run.data.tags.get(PARENT_TAG) == (self.cfg.sweep.parent_run_id or None)
        if run.info.lifecycle_stage != "active" or run.info.experiment_id != self.experiment_id or not same_parent:
            return None
        # Only the same command continues a run. A finished run stays as it is, and a run over
        # other folds (e.g. fold 1 alone after all five) is a new run that may reuse finished
        # folds: merged into the old one, it would make a 1-fold and a 5-fold run one record.
        if run.info.status == "FINISHED" or run.data.tags.get(FOLDS_TAG) != self._tags.get(FOLDS_TAG):
            return None
        return run

    def _children(self, run_id: str) -> list:
        return list(self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'"))

    def _log_parent_params(self, params: Mapping[str, str]) -> None:
        # Params are write-once in MLflow: a resumed run only adds the missing ones.
        new = {k: v for k, v in params.items() if k not in self._parent_params}
        changed = sorted(k for k, v in params.items() if k in self._parent_params and self._parent_params[k] != v)
        if changed:
            log.warning("MLflow: resumed run keeps its earlier values of %s", ", ".join(changed))
        log_params(self.client, self.parent_run_id, new)
        self._parent_params.update(new)

    # ---- folds

    def on_repeat_start(self, repeat: int, seed: int) -> None:
        self._repeat = repeat

    def on_fold_start(self, fold: int, context: dict[str, Any]) -> None:
        self._model = context.get("model")
        self._num_parameters = context.get("num_parameters")
        if self._num_parameters is not None:
            self._log_parent_params({"num_parameters": str(self._num_parameters)})
        # This fold trains again: runs of an interrupted attempt at it are superseded.
        self._delete_earlier_runs(fold, keep_finished=False)
        run_id = self._create_fold_run(fold)
        self._fold_runs[fold] = run_id

    def _create_fold_run(self, fold: int, extra_tags: Mapping[str, str] | None = None) -> str:
        tags = {PARENT_TAG: self.parent_run_id, ROLE_TAG: "fold", FOLD_TAG: str(fold), **self._tags,
                **source_tags(), **(extra_tags or {})}
        if self.cfg.sweep.trial_number is not None:
            tags[TRIAL_TAG] = str(self.cfg.sweep.trial_number)
        name = f"fold-{fold}"
        if self._repeats > 1:
            tags[REPEAT_TAG] = str(self._repeat)
            name = f"repeat-{self._repeat}-fold-{fold}"
        run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id
        params = {"fold": str(fold)}
        if self._num_parameters is not None:
            params["num_parameters"] = str(self._num_parameters)
        log_params(self.client, run_id, params)
        self._logged[fold] = set()
        return run_id

    def _delete_earlier_runs(self, fold: int, keep_finished: bool) -> None:
        for run in self._earlier_fold_runs.get((self._repeat, fold), []):
            if keep_finished and run.info.status == "FINISHED":
                continue
            log.info("MLflow: deleting run %s of an interrupted attempt at fold %d", run.info.run_id, fold)
            self.client.delete_run(run.info.run_id)
        self._earlier_fold_runs.pop((self._repeat, fold), None)

    def on_model_trained(self, fold: int, model: torch.nn.Module) -> None:
        self._model = model  # the evaluated model (EMA copy when enabled)

    def on_epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        run_id = self._fold_runs.get(fold)
        if run_id is None:
            return
        values = _numeric(metrics)
        log_metrics(self.client, run_id, values, step=epoch)
        self._logged[fold].update((key, epoch) for key in values)

    def on_fold_end(self, result: FoldResult, resumed: bool = False) -> None:
        fold = result.fold
        if resumed:
            earlier = self._earlier_fold_runs.get((self._repeat, fold), [])
            if any(run.info.status == "FINISHED" for run in earlier):
                self._delete_earlier_runs(fold, keep_finished=True)  # keep the finished one
                return
            # Trained while tracking was off or before the run could be logged: log it from the checkpoint.
            self._delete_earlier_runs(fold, keep_finished=False)
            self._num_parameters = self._num_parameters or _int_or_none(self._parent_params.get("num_parameters"))
            run_id = self._create_fold_run(fold, {"esc_sweep.from_checkpoint": "true"})
            self._fold_runs[fold] = run_id
        run_id = self._fold_runs[fold]
        self._log_missing_history(fold, run_id, result.history)
        self._log_fold_summary(run_id, result)
        if self.cfg.tracking.log_models and not resumed and self._model is not None:
            self._log_weights(run_id, fold)
        self.client.set_terminated(run_id, "FINISHED")
        del self._fold_runs[fold]
        self._model = None

    def _log_missing_history(self, fold: int, run_id: str, history: list[dict[str, float]]) -> None:
        # Covers folds restored from a checkpoint and values the trainer fills in after the
        # last on_epoch_end (train accuracy of a fold that stopped early).
        logged = self._logged.setdefault(fold, set())
        now = now_ms()
        missing = [
            Metric(key, display_value(value), now, int(record["epoch"]))
            for record in history
            for key, value in _numeric(record).items()
            if (key, int(record["epoch"])) not in logged
        ]
        for start in range(0, len(missing), 1000):
            self.client.log_batch(run_id, metrics=missing[start : start + 1000])
        logged.update((m.key, m.step) for m in missing)

    def _log_fold_summary(self, run_id: str, result: FoldResult) -> None:
        finals = {
            "final_val_acc": result.val_acc,
            "final_val_loss": result.val_loss,
            "final_val_f1": result.val_f1,
            "final_train_acc": result.train_acc,
            "final_train_loss": result.train_loss,
            "final_gap": result.gap,
            "epochs_trained": result.epochs,
            "fold_seconds": result.seconds,
        }
        val_accs = [(r["val_acc"], r["epoch"]) for r in result.history if "val_acc" in r]
        if val_accs:
            best_acc, best_epoch = max(val_accs, key=lambda pair: (pair[0], -pair[1]))
            finals.update(best_val_acc=best_acc, best_epoch=best_epoch)
        if result.val_acc_tta is not None:
            finals["final_val_acc_tta"] = result.val_acc_tta
        if result.val_map3 is not None:
            finals["final_val_map3"] = result.val_map3
        log_metrics(self.client, run_id, finals, step=result.epochs)
        self.client.log_dict(run_id, result.to_dict(), "results.json")
        from esc_sweep.figures import results as figures  # deferred: matplotlib (~3 s), until a figure is drawn
        # The fold's confusion matrix goes to the CV run too, so it shows all of them in one place.
        figure = figures.confusion_matrix_figure(result.confusion, self._class_names, f"fold {result.fold}")
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / f"confusion_fold{result.fold}.png"
            figure.savefig(png, dpi=100)
            self.client.log_artifact(run_id, str(png), "figures")
            self.client.log_artifact(self.parent_run_id, str(png), "figures/folds")
        if result.history:
            log_figure(self.client, run_id, figures.learning_curve_figure({result.fold: result.history}),
                        "figures/learning_curve.png")

    def _log_weights(self, run_id: str, fold: int) -> None:
        # A plain state_dict: loadable into esc_sweep.models.create_model(...) with torch.load.
        state = {k: v.detach().cpu() for k, v in self._model.state_dict().items()}
        info = {
            "fold": fold,
            "class_names": self._class_names,
            "num_parameters": self._num_parameters,
            "model": OmegaConf.to_container(self.cfg.model, resolve=True),
            "features": OmegaConf.to_container(self.cfg.features, resolve=True),
        }
        if self.cfg.trainer.ema_decay > 0:
            info["note"] = "EMA weights: the model the validation metrics were measured with"
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, Path(tmp) / "state_dict.pt")
            (Path(tmp) / "info.json").write_text(json.dumps(info, indent=2))
            self.client.log_artifacts(run_id, tmp, artifact_path="model")

    # ---- CV end

    def on_cv_end(self, result: CVResult) -> None:
        run_id = self.parent_run_id
        # A one-fold run has no interval (NaN): left out rather than logged as NaN.
        summary = {k: v for k, v in result.summary().items() if v is not None and math.isfinite(v)}
        # One value per fold (its mean over the repeats, with trainer.repeats).
        per_fold = {f"fold_{fold}_val_acc": acc
                    for fold, acc in zip(sorted({f.fold for f in result.folds}), result.fold_means("val_acc"))}
        log_metrics(self.client, run_id, {**summary, **per_fold, "cv_seconds": result.seconds})
        self._log_per_fold_series(result)
        self.client.log_dict(run_id, result.to_dict(), "results.json")

        from esc_sweep.figures import results as figures  # deferred: matplotlib (~3 s), see above

        names = result.class_names
        log_figure(self.client, run_id,
                    figures.confusion_matrix_figure(result.pooled_confusion, names, "all folds (pooled)"),
                    "figures/confusion_pooled.png")
        self.client.log_text(run_id, figures.confusion_matrix_html(result.pooled_confusion, names,
                                                                   "all folds (pooled)"),
                             "figures/confusion_pooled.html")
        pairs = figures.most_confused_pairs(result.pooled_confusion, names, top=TOP_CONFUSED_PAIRS)
        self.client.log_dict(run_id, {"top": TOP_CONFUSED_PAIRS, "pairs": pairs}, "most_confused_pairs.json")
        self.client.log_text(run_id, figures.most_confused_pairs_markdown(pairs), "most_confused_pairs.md")
        per_class = result.per_class_accuracy()
        log_figure(self.client, run_id, figures.per_class_accuracy_figure(per_class), "figures/per_class_accuracy.png")
        pooled = result.pooled_confusion
        self.client.log_table(run_id, {
            "class": names,
            "accuracy": [per_class[n] for n in names],
            "correct": [pooled[i][i] for i in range(len(names))],
            "clips": [sum(row) for row in pooled],
        }, "per_class_accuracy.json")
        histories = {f.fold: f.history for f in result.folds if f.history}
        if histories:
            log_figure(self.client, run_id, figures.learning_curve_figure(histories), "figures/learning_curves.png")
        self._stop_system_metrics()
        if not self.cfg.tracking.run_name:
            # The accuracy leads the name: the runs table shows the first 20 characters or so of it.
            # A sweep's trial keeps its "trial-<n>-" in front.
            trial = self.cfg.sweep.trial_number
            name = finished_run_name(run_name(self._tags), summary.get("cv_val_acc_mean", float("nan")),
                                     summary.get("cv_val_acc_ci95_low"), summary.get("cv_val_acc_ci95_high"))
            self.client.update_run(run_id, name=f"trial-{trial}-{name}" if trial is not None else name)
        self.client.set_tag(run_id, STATUS_TAG, "finished")
        self.client.set_terminated(run_id, "FINISHED")
        self._parent_open = False
        log.info("MLflow: run %s; the runs table, best first: %s", run_id,
                 runs_table_link(self.tracking_uri, self.experiment_id))

    def _stop_system_metrics(self, status: str = "FINISHED") -> None:
        """Stop sampling; the "system metrics" child ends with its CV run's status."""
        sampler, self._system_metrics = self._system_metrics, None
        if sampler is not None:
            sampler.stop()
        run_id, self._system_run_id = self._system_run_id, None
        if run_id is not None and self.client is not None:
            try:
                self.client.set_terminated(run_id, status)
            except MlflowException as err:
                log.warning("MLflow: could not end the system-metrics run: %s", err)

    def _log_per_fold_series(self, result: CVResult) -> None:
        """``val_acc`` etc. of each fold at step = fold number: on the CV run's charts they line up with the mean."""
        now = now_ms()
        folds = sorted({f.fold for f in result.folds})
        points = [
            Metric(key, display_value(value), now, fold)
            for key in PER_FOLD_KEYS
            if all(getattr(f, key, None) is not None for f in result.folds)
            for fold, value in zip(folds, result.fold_means(key))
        ]
        if self._resumed:  # a reopened run may hold some of these points already
            logged = {(key, m.step) for key in PER_FOLD_KEYS
                      for m in self.client.get_metric_history(self.parent_run_id, key)}
            points = [m for m in points if (m.key, m.step) not in logged]
        if points:
            self.client.log_batch(self.parent_run_id, metrics=points)

    # ---- failures

    def on_exception(self, error: BaseException) -> None:
        """End every open run: KILLED for Ctrl-C, FAILED for an error, and a pruned sweep trial
        FINISHED but marked pruned (MLflow has no PRUNED status, and KILLED reads as a failure).

        Each CV run ends with the tag ``esc_sweep.status``: finished, pruned, failed or interrupted.
        """
        if self.client is None:
            self._stop_system_metrics()
            return
        pruned = type(error).__name__ == "TrialPruned"
        interrupted = isinstance(error, KeyboardInterrupt)
        if pruned:
            status, outcome = RunStatus.to_string(RunStatus.FINISHED), "pruned"
        elif interrupted:
            status, outcome = RunStatus.to_string(RunStatus.KILLED), "interrupted"
        else:
            status, outcome = RunStatus.to_string(RunStatus.FAILED), "failed"
        self._stop_system_metrics(status)
        message = f"{type(error).__name__}: {error}"[:5000]
        open_runs = list(self._fold_runs.values()) + ([self.parent_run_id] if self._parent_open else [])
        for run_id in open_runs:
            try:
                if pruned:
                    self._mark_pruned(run_id, str(error))
                elif not interrupted:
                    self.client.set_tag(run_id, ERROR_TAG, message)
                self.client.set_tag(run_id, STATUS_TAG, outcome)
                self.client.set_terminated(run_id, status)
            except Exception as cleanup_error:  # never hide the error that stopped the run
                log.warning("MLflow: could not mark run %s %s: %s", run_id, outcome, cleanup_error)
        self._fold_runs.clear()
        self._parent_open = False

    def _mark_pruned(self, run_id: str, reason: str) -> None:
        """Tags, name and description that say "pruned" wherever the run is shown."""
        self.client.set_tag(run_id, PRUNED_TAG, "true")
        self.client.set_tag(run_id, NOTE_TAG, f"Pruned by the sweep's pruner ({reason or 'no reason given'}): "
                                              "stopped early on purpose, not a failure; not a finished estimate.")
        name = self.client.get_run(run_id).info.run_name or ""
        if not name.endswith(PRUNED_SUFFIX):
            self.client.update_run(run_id, name=f"{name}{PRUNED_SUFFIX}" if name else PRUNED_SUFFIX.strip(" ·"))


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


__all__ = [
    "MlflowTracker",
    "TrackingError",
    "resolve_tracking_uri",
    "flatten_config",
    "git_commit",
]
