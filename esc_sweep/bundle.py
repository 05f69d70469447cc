"""Model bundles: a trained model that can be used without the training code's config.

``trainer.final_fit=true`` retrains on every fold after the cross-validation
and writes a bundle folder:

    bundle/
      model.pt      state_dict of the Classifier (standardisation buffers included)
      bundle.json   format version, class names, the resolved config (model,
                    features and dataset sections are what loading needs), the
                    CV metrics summary and how the final fit went
      metrics.json  the full cross-validation result (per fold, confusion, histories)

to the run's output folder and, when MLflow tracking is on, as the artifact
folder ``bundle/`` of the run. ``load_bundle`` accepts the folder (or the run
output folder above it) or an MLflow run id and returns a :class:`Bundle`
whose ``predict`` turns waveforms into class probabilities.

``load_backbone_weights`` starts a new model from a bundle for fine-tuning
(``model.init_from=<bundle>``): every weight whose name and shape match is
copied, except the classifier head, which stays freshly initialised for the
new classes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from esc_sweep.config import FeaturesConfig, ModelConfig
from esc_sweep.errors import EscSweepError
from esc_sweep.tracking_uri import is_server, resolve_tracking_uri, server_problem

log = logging.getLogger("esc_sweep")

BUNDLE_FORMAT = "esc_sweep-bundle"
BUNDLE_VERSION = 1
BUNDLE_DIR = "bundle"  # folder name on disk and artifact path in MLflow
WEIGHTS_FILE = "model.pt"
META_FILE = "bundle.json"
METRICS_FILE = "metrics.json"

# MLflow run ids are uuid4 hex strings; "runs:/<id>[/...]" URIs are accepted too.
_RUN_ID = re.compile(r"^(?:runs:/)?([0-9a-f]{32})(?:/.*)?$")


class BundleError(EscSweepError):
    """A model bundle cannot be found, downloaded or used."""


# --------------------------------------------------------------------------
# Writing: the final fit


def final_fit(cfg: DictConfig, cv: Any, output_dir: Path, run_id: Optional[str] = None) -> Path:
    """Train one model on every clip of the dataset and save it as a bundle.

    ``cv`` (a CVResult) supplies the metrics the bundle reports: the final
    model has no held-out data of its own, so the cross-validation estimate is
    its honest accuracy. Returns the bundle folder ``output_dir/bundle``.
    """
    from esc_sweep.callbacks import CallbackList
    from esc_sweep.progress import TrainingProgress, console
    from esc_sweep.trainer import TrainingData, pick_device, prepare, seed_everything, train_model

    started = time.perf_counter()
    cfg = _final_fit_config(cfg, cv)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    device = pick_device(cfg.trainer.device)
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    clips, spectrograms, targets = prepare(cfg, device)
    data = TrainingData(
        spectrograms=spectrograms,
        targets=targets,
        num_classes=clips.num_classes,
        train_index=torch.arange(len(clips), device=device),
        val_index=None,
    )
    console.print(f"[bold]final fit[/]: training on all {len(clips)} clips for {cfg.trainer.epochs} epochs")
    with TrainingProgress(cfg.trainer.progress, 1) as progress:
        model, history, _ = train_model(cfg, data, device, fold=0, callbacks=CallbackList(), progress=progress)

    last = history[-1]
    training = {
        "epochs": len(history),
        "num_clips": len(clips),
        "train_acc": last.get("train_acc"),
        "train_loss": last.get("train_loss"),
        "seconds": time.perf_counter() - started,
        "dataset_fingerprint": clips.fingerprint,
    }
    log_to_run = bool(cfg.tracking.enabled and run_id)
    path = save_bundle(Path(output_dir) / BUNDLE_DIR, model, cfg, clips.class_names, cv, training,
                       run_id=run_id if log_to_run else None)
    console.print(f"[bold green]bundle saved[/] to {path}")

    if log_to_run:
        _log_to_mlflow(cfg, run_id, path, training)
        console.print(f"bundle logged to MLflow run {run_id} (artifact '{BUNDLE_DIR}/')")
    elif cfg.tracking.enabled:
        log.warning("tracking is on but no MLflow run id is known: the bundle was saved to disk only")

    # Pictures of the data, the bundle's predictions and the CV results. The
    # bundle is reloaded from disk, which also proves the saved files work.
    from esc_sweep.plots import TRAINING_CLIPS_NOTE, log_plots, make_plots

    bundle = load_bundle(path, device=device)
    plots = make_plots(
        Path(output_dir) / "plots", class_names=clips.class_names, cv=cv.to_dict() if cv is not None else None,
        clips=clips, bundle=bundle, predictions_note=TRAINING_CLIPS_NOTE,
    )
    if log_to_run:
        log_plots(plots, run_id, tracking_uri_for(cfg))
    console.print(f"{len(plots)} plots written to {Path(output_dir) / 'plots'}")
    return path


def _final_fit_config(cfg: DictConfig, cv: Any) -> DictConfig:
    """The training config of the final fit.

    With early stopping, the folds stopped at different epochs and the final
    fit has no validation data to stop on: it trains for the median number of
    epochs the folds ran instead of ``trainer.epochs``.
    """
    cfg = copy.deepcopy(cfg)
    if cfg.trainer.early_stopping_patience > 0 and cv is not None and cv.folds:
        epochs = int(statistics.median(f.epochs for f in cv.folds))
        OmegaConf.update(cfg, "trainer.epochs", max(1, epochs), merge=False)
    return cfg


def save_bundle(
    directory: Path,
    model: nn.Module,
    cfg: DictConfig,
    class_names: Sequence[str],
    cv: Any = None,
    training: Optional[dict[str, Any]] = None,
    run_id: Optional[str] = None,
) -> Path:
    """Write weights, config, class names and metrics to ``directory``.

    ``run_id`` (the MLflow run the bundle belongs to) is recorded for provenance.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILE)
    config = OmegaConf.to_container(cfg, resolve=True)
    # A bundle must not start a download when it is loaded somewhere else.
    config["model"]["pretrained"] = False
    meta = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "class_names": list(class_names),
        "num_bins": int(state["standardize.mean"].shape[2]),
        "config": config,
        "cv": cv.summary() if cv is not None else {},
        "per_class_accuracy": cv.per_class_accuracy() if cv is not None else {},
        "training": training or {},
        "mlflow_run_id": run_id,
    }
    (directory / META_FILE).write_text(json.dumps(_json_safe(meta), indent=2))
    if cv is not None:
        (directory / METRICS_FILE).write_text(json.dumps(_json_safe(cv.to_dict()), indent=2))
    return directory


def _json_safe(value: Any) -> Any:
    """NaN/inf become null so the JSON is valid for any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _log_to_mlflow(cfg: DictConfig, run_id: str, path: Path, training: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    # The tracker has ended the CV run by now; artifacts and metrics can still be added.
    client = MlflowClient(tracking_uri_for(cfg))
    client.log_artifacts(run_id, str(path), artifact_path=BUNDLE_DIR)
    for key in ("train_acc", "train_loss", "seconds"):
        value = training.get(key)
        if value is not None and math.isfinite(value):
            client.log_metric(run_id, f"final_fit_{key}", float(value))


# --------------------------------------------------------------------------
# Tracking URI


def tracking_uri_for(cfg: Optional[DictConfig] = None, explicit: Optional[str] = None) -> str:
    """The MLflow tracking URI: ``explicit``, else the tracking module's rule (tracking.uri,
    $MLFLOW_TRACKING_URI, ./mlruns) for ``cfg``."""
    if explicit:
        return explicit
    return resolve_tracking_uri(cfg)


# --------------------------------------------------------------------------
# Finding a bundle


@contextlib.contextmanager
def bundle_directory(source: Union[str, Path], tracking_uri: Optional[str] = None) -> Iterator[Path]:
    """A local folder holding the bundle ``source`` names, for the ``with`` block.

    ``source`` is a bundle folder, a folder holding ``bundle/`` (a run's
    output folder), a ``bundle.json`` file, an MLflow run id or ``runs:/<id>``.
    Bundles of MLflow runs are downloaded into a temporary folder.
    """
    text = str(source).strip()
    path = Path(text).expanduser()
    if path.exists():
        yield _local_bundle_dir(path)
        return
    match = _RUN_ID.match(text)
    if match is None:
        raise BundleError(
            f"model bundle {text!r} not found: give a bundle folder (<run output dir>/{BUNDLE_DIR}, "
            f"written by trainer.final_fit=true) or an MLflow run id"
        )
    with tempfile.TemporaryDirectory(prefix="esc_sweep-bundle-") as tmp:
        yield _download_bundle(match.group(1), Path(tmp), tracking_uri)


def _local_bundle_dir(path: Path) -> Path:
    if path.is_file() and path.name == META_FILE:
        path = path.parent
    for candidate in (path, path / BUNDLE_DIR):
        if (candidate / META_FILE).is_file():
            if not (candidate / WEIGHTS_FILE).is_file():
                raise BundleError(f"bundle {candidate} has no {WEIGHTS_FILE}: it is incomplete, train it again")
            return candidate
    raise BundleError(
        f"{path} is not a model bundle: expected {META_FILE} and {WEIGHTS_FILE} in it "
        f"(bundles are written to <run output dir>/{BUNDLE_DIR} by trainer.final_fit=true)"
    )


def _download_bundle(run_id: str, destination: Path, tracking_uri: Optional[str]) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri_for(explicit=tracking_uri)
    problem = server_problem(uri) if is_server(uri) else None
    if problem is not None:
        raise BundleError(
            f"no MLflow server answers at {uri} ({problem}): start it, or fix --tracking-uri / MLFLOW_TRACKING_URI"
        )
    client = MlflowClient(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise BundleError(
            f"MLflow run {run_id} not found at tracking URI {uri}: check the id, or point "
            f"--tracking-uri / MLFLOW_TRACKING_URI at the server that tracked it"
        ) from None
    no_bundle = (
        f"MLflow run {run_id} has no '{BUNDLE_DIR}/' artifact: bundles are logged by runs trained with "
        f"trainer.final_fit=true (the cross-validation run, not a fold's run)"
    )
    if not client.list_artifacts(run_id, BUNDLE_DIR):
        raise BundleError(no_bundle)
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=BUNDLE_DIR, dst_path=str(destination), tracking_uri=uri
        )
    except (MlflowException, OSError) as err:
        raise BundleError(f"{no_bundle} ({_first_line(err)})") from None
    return _local_bundle_dir(Path(local))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def read_meta(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((Path(directory) / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"cannot read {Path(directory) / META_FILE}: {err}") from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{Path(directory) / META_FILE} is not an esc_sweep bundle description")
    if int(meta.get("version", 0)) > BUNDLE_VERSION:
        raise BundleError(
            f"bundle {directory} has format version {meta['version']}; this esc_sweep reads up to "
            f"{BUNDLE_VERSION}: upgrade esc_sweep"
        )
    return meta


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(Path(directory) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors of a damaged file
        raise BundleError(f"cannot read weights {Path(directory) / WEIGHTS_FILE}: {_first_line(err)}") from None


def _section(schema: type, values: dict[str, Any]) -> Any:
    """A typed config section from a saved dict; keys unknown to this version are ignored."""
    known = {f.name for f in fields(schema)}
    return OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in values.items() if k in known})


# --------------------------------------------------------------------------
# Using a bundle


@dataclass
class Bundle:
    """A trained classifier with its feature extractor and class names."""

    source: str  # what the user named: a folder or an MLflow run id
    model: nn.Module  # Classifier, eval mode
    features: nn.Module  # waveform [B, T] -> dB spectrogram [B, 1, F, frames]
    class_names: list[str]
    meta: dict[str, Any]  # bundle.json
    metrics: Optional[dict[str, Any]]  # metrics.json (full CV result), when present
    device: torch.device

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    @property
    def sample_rate(self) -> int:
        return int(self.config["features"]["sample_rate"])

    @property
    def clip_seconds(self) -> float:
        return float(self.config["dataset"]["clip_seconds"])

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @torch.inference_mode()
    def spectrogram(self, waveforms: torch.Tensor) -> torch.Tensor:
        """dB spectrograms [B, 1, F, frames] of waveforms [B, T] at ``sample_rate``."""
        return self.features(_as_batch(waveforms).to(self.device)).float()

    @torch.inference_mode()
    def predict(self, waveforms: Union[torch.Tensor, np.ndarray], batch_size: int = 64) -> torch.Tensor:
        """Class probabilities [B, C] (rows sum to 1) for mono waveforms at ``sample_rate``.

        ``waveforms`` is [T] or [B, T]. Longer than a training clip, each row is
        cut into clip-length windows (the last one padded with zeros) and the
        window probabilities are averaged, weighted by how much real audio each
        window holds so a mostly padded tail counts for little.
        """
        batch = _as_batch(waveforms)
        rows, length = batch.shape
        clip = self.clip_samples
        num_windows = max(1, math.ceil(length / clip))
        padded = torch.nn.functional.pad(batch, (0, num_windows * clip - length))
        windows = padded.reshape(rows * num_windows, clip)
        real = torch.clamp(length - torch.arange(num_windows) * clip, 0, clip).double() / clip
        probabilities = []
        for chunk in windows.split(batch_size):
            logits = self.model(self.spectrogram(chunk)).float()
            probabilities.append(torch.softmax(logits, dim=1).cpu())
        per_window = torch.cat(probabilities).double().reshape(rows, num_windows, -1)
        weights = (real / real.sum()).reshape(1, num_windows, 1)
        return (per_window * weights).sum(1).float()

    def top_k(self, probabilities: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely ``(class name, probability)`` of one probability row."""
        k = max(1, min(int(k), self.num_classes))
        values, indices = torch.topk(probabilities.flatten(), k)
        return [(self.class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]

    def describe(self) -> str:
        cv = self.meta.get("cv") or {}
        acc = cv.get("cv_val_acc_mean")
        model = self.config["model"]["name"]
        text = f"{model}, {self.num_classes} classes, {self.clip_seconds:g} s clips at {self.sample_rate} Hz"
        if acc is not None:
            text += f", CV accuracy {100 * acc:.1f}%"
        return text


def _as_batch(waveforms: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    batch = torch.as_tensor(waveforms, dtype=torch.float32)
    if batch.ndim == 1:
        batch = batch[None]
    if batch.ndim != 2 or batch.shape[1] == 0:
        raise BundleError(f"expected mono waveforms shaped [samples] or [batch, samples], got {tuple(batch.shape)}")
    return batch


def load_bundle(
    source: Union[str, Path], device: Union[str, torch.device] = "cpu", tracking_uri: Optional[str] = None
) -> Bundle:
    """Load a bundle folder or the bundle of an MLflow run id, ready to predict."""
    from esc_sweep.features import build_features
    from esc_sweep.models import create_model
    from esc_sweep.trainer import pick_device

    with bundle_directory(source, tracking_uri) as directory:
        meta = read_meta(directory)
        state = read_weights(directory)
        metrics_path = directory / METRICS_FILE
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    config = meta["config"]
    model_cfg = _section(ModelConfig, config["model"])
    features_cfg = _section(FeaturesConfig, config["features"])
    model_cfg.pretrained = False
    model_cfg.init_from = None
    model = create_model(model_cfg, len(meta["class_names"]), features_cfg.normalize, int(meta["num_bins"]))
    mismatch = _state_mismatch(model, state)
    if mismatch:
        raise BundleError(
            f"bundle {source}: its weights do not fit a {model_cfg.name} built by this esc_sweep ({mismatch}); "
            f"was it saved by a version with a different model architecture?"
        )
    model.load_state_dict(state)
    device = pick_device(str(device)) if isinstance(device, str) else device
    return Bundle(
        source=str(source),
        model=model.to(device).eval(),
        features=build_features(features_cfg).to(device).eval(),
        class_names=list(meta["class_names"]),
        meta=meta,
        metrics=metrics,
        device=device,
    )


def _state_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """'' when ``state`` fits ``model`` exactly, else a short description of what differs."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    parts = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped)):
        if names:
            parts.append(f"{len(names)} {label}, e.g. {names[0]}")
    return "; ".join(parts)


# --------------------------------------------------------------------------
# Fine-tuning from a bundle


def classifier_head_names(model: nn.Module) -> set[str]:
    """state_dict keys of the classifier head: timm's ``get_classifier()``, else the last Linear."""
    backbone = getattr(model, "backbone", model)
    head = backbone.get_classifier() if hasattr(backbone, "get_classifier") else None
    if head is None or not list(head.parameters()):
        linears = [m for m in backbone.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None:
        return set()
    for prefix, module in model.named_modules():
        if module is head:
            return {f"{prefix}.{name}" for name in head.state_dict()}
    return set()


def load_backbone_weights(model: nn.Module, bundle: Union[str, Path]) -> dict[str, list[str]]:
    """Copy the bundle's weights into ``model`` except the classifier head.

    Weights are matched by name and shape; the head keeps its fresh
    initialisation (sized for the new classes). Returns the names that were
    ``loaded``, left as the ``head`` and ``skipped`` (no match in the bundle).
    Raises BundleError when no backbone weight matches (another architecture).
    """
    with bundle_directory(bundle) as directory:
        meta = read_meta(directory)
        source = read_weights(directory)
    head = classifier_head_names(model)
    target = model.state_dict()
    loaded, skipped = [], []
    for name, tensor in target.items():
        if name in head:
            continue
        incoming = source.get(name)
        if incoming is not None and incoming.shape == tensor.shape:
            target[name] = incoming.to(dtype=tensor.dtype)
            loaded.append(name)
        else:
            skipped.append(name)
    # Batch-norm step counters are scalars that match any architecture: they prove nothing.
    backbone_loaded = [n for n in loaded if not n.startswith("standardize.") and not n.endswith("num_batches_tracked")]
    bundle_model = meta["config"]["model"]["name"]
    if not backbone_loaded:
        raise BundleError(
            f"model.init_from={bundle}: none of its weights fit this model (bundle model {bundle_model!r}, "
            f"width {meta['config']['model'].get('width')}): use the same model.name and model.width as the bundle"
        )
    model.load_state_dict(target)
    if skipped:
        log.warning(
            "model.init_from: %d weights have no match in the bundle and keep their fresh values: %s%s",
            len(skipped), ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "",
        )
    log.info(
        "model.init_from: loaded %d weights from %s (%s); new head for %s",
        len(loaded), bundle, bundle_model, ", ".join(sorted(head)) or "-",
    )
    return {"loaded": loaded, "head": sorted(head), "skipped": skipped}


__all__ = [
    "BUNDLE_DIR",
    "Bundle",
    "BundleError",
    "bundle_directory",
    "classifier_head_names",
    "final_fit",
    "load_backbone_weights",
    "load_bundle",
    "save_bundle",
]
