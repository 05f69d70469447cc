"""A bundle in memory: the classifier, its front end and class names, ready to predict.

A fold ensemble (``members`` in bundle.json) loads as ``FoldEnsemble``, a module that
stands in for one classifier; test-time crops (``Bundle.tta_crops``, default the
bundle's ``trainer.tta_crops``) wrap whichever model it is.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from esc_sweep.bundle.ensemble import FoldEnsemble
from esc_sweep.bundle.format import METRICS_FILE, bundle_directory, read_member_weights, read_meta
from esc_sweep.config import FeaturesConfig, ModelConfig
from esc_sweep.errors import BundleError, EscSweepError
from esc_sweep.features.frontends import frames_per_second, model_input_bins
from esc_sweep.features.transforms import build_features
from esc_sweep.models import create_model
from esc_sweep.models.init_from import classifier_head_names
from esc_sweep.runtime import pick_device
from esc_sweep.training.tta import averaged_log_probabilities, crop_length

log = logging.getLogger("esc_sweep")


def _section(schema: type, values: dict[str, Any], name: str = "", source: str = "") -> Any:
    """A typed config section from a saved dict; keys unknown to this version are ignored.

    A value of the wrong type (a hand-edited bundle.json) is a BundleError naming its field.
    """
    known = {f.name for f in fields(schema)}
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in values.items() if k in known})
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
        raise BundleError(f"{source}/bundle.json: field 'config.{name}.{key}' has an invalid value "
                          f"({str(err).splitlines()[0]}): restore the file or train the bundle again") from None


def repeat_to(waveforms: torch.Tensor, length: int) -> torch.Tensor:
    """``waveforms [..., T]`` repeated end to end along the last axis and cut to ``length`` samples."""
    times = -(-length // waveforms.shape[-1])
    return waveforms.repeat(*([1] * (waveforms.dim() - 1)), times)[..., :length]


class _FeatureKeys:
    """A bundle's ``config.features`` dict read as attributes (what ``features.frontends`` helpers take)."""

    def __init__(self, features: dict[str, Any]):
        self.kind = features.get("kind", "mel")
        self.sample_rate, self.hop_length = int(features["sample_rate"]), int(features["hop_length"])


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
    tta_crops: int = 0  # test-time crops per clip-length window (0/1: the whole window once)

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
    def repeats_short_clips(self) -> bool:
        """Trained with ``dataset.short_clips=repeat``: a recording shorter than a window is repeated end to
        end to fill it, as in training and evaluation; otherwise it is zero-padded."""
        dataset = self.config.get("dataset") or {}
        return bool(dataset.get("variable_length")) and dataset.get("short_clips") == "repeat"

    def fill_short(self, waveforms: torch.Tensor, real_samples: Optional[int]) -> torch.Tensor:
        """Windows ``[..., clip_samples]`` of a recording of ``real_samples`` (< one window: the rest is
        zeros) filled as the model was trained: repeated under ``repeats_short_clips``, else unchanged."""
        if not self.repeats_short_clips or real_samples is None or not 0 < real_samples < waveforms.shape[-1]:
            return waveforms
        return repeat_to(waveforms[..., :real_samples], waveforms.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_members(self) -> int:
        """Models averaged: the folds of an ensemble, else 1."""
        return len(self.meta.get("members") or []) or 1

    def tta_crop_frames(self, total: int) -> int:
        """Frames per test-time crop of a clip-length window of ``total`` frames (see esc_sweep.training.tta).

        ``total`` comes from the spectrogram itself: frame counts differ between front ends
        (centred STFT frames vs Kaldi's whole windows).
        """
        features = self.config["features"]
        crop_seconds = float((self.config.get("augmentation") or {}).get("crop_seconds") or 0.0)
        return crop_length(total, crop_seconds, frames_per_second(_FeatureKeys(features)))

    def _scores(self, spectrograms: torch.Tensor) -> torch.Tensor:
        """Logits (or log-probabilities, which softmax alike) of clip-length spectrograms, with test-time crops."""
        if self.tta_crops > 1:
            frames = min(self.tta_crop_frames(spectrograms.shape[-1]), spectrograms.shape[-1])
            return averaged_log_probabilities(self.model, spectrograms, self.tta_crops, frames)
        return self.model(spectrograms).float()

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
        if self.repeats_short_clips and 0 < length < clip:  # dataset.short_clips=repeat, as in training
            batch, length = repeat_to(batch, clip), clip
        num_windows = max(1, math.ceil(length / clip))
        padded = torch.nn.functional.pad(batch, (0, num_windows * clip - length))
        windows = padded.reshape(rows * num_windows, clip)
        real = torch.clamp(length - torch.arange(num_windows) * clip, 0, clip).double() / clip
        probabilities = []
        for chunk in windows.split(batch_size):
            logits = self._scores(self.spectrogram(chunk))
            probabilities.append(torch.softmax(logits, dim=1).cpu())
        per_window = torch.cat(probabilities).double().reshape(rows, num_windows, -1)
        weights = (real / real.sum()).reshape(1, num_windows, 1)
        return (per_window * weights).sum(1).float()

    @torch.inference_mode()
    def predict_windows(self, windows, total_samples: Optional[int] = None, batch_size: int = 64) -> torch.Tensor:
        """Class probabilities [C] of a recording given as an iterable of clip-length windows [clip_samples].

        Memory stays bounded by ``batch_size`` windows, however long the recording
        (``esc_sweep.data.audio.iter_windows`` reads a file that way). The windows
        are averaged as in :meth:`predict`: the last one, padded with zeros, weighs
        as much real audio as it holds when ``total_samples`` is known.
        """
        clip = self.clip_samples
        sums, weights, batch, count = None, 0.0, [], 0

        def flush():
            nonlocal sums
            logits = self._scores(self.spectrogram(torch.stack(batch)))
            probabilities = torch.softmax(logits, dim=1).cpu().double()
            real = []
            for i in range(len(batch)):
                index = count - len(batch) + i
                left = clip if total_samples is None else min(clip, max(0, total_samples - index * clip))
                real.append(left / clip)
            real = torch.tensor(real, dtype=torch.float64)
            part = (probabilities * real[:, None]).sum(0)
            sums = part if sums is None else sums + part
            batch.clear()
            return float(real.sum())

        for window in windows:
            window = torch.as_tensor(window, dtype=torch.float32)
            batch.append(self.fill_short(window, total_samples) if count == 0 else window)
            count += 1
            if len(batch) == batch_size:
                weights += flush()
        if batch:
            weights += flush()
        if sums is None:
            raise BundleError("the recording has no samples")
        return (sums / max(weights, 1e-12)).float()

    def top_k(self, probabilities: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely ``(class name, probability)`` of one probability row."""
        k = max(1, min(int(k), self.num_classes))
        values, indices = torch.topk(probabilities.flatten(), k)
        return [(self.class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]

    def describe(self) -> str:
        cv = self.meta.get("cv") or {}
        acc = cv.get("cv_val_acc_mean")
        model = self.config["model"]["name"]
        if self.num_members > 1:
            model = f"fold ensemble of {self.num_members} {model}"
        text = f"{model}, {self.num_classes} classes, {self.clip_seconds:g} s clips at {self.sample_rate} Hz"
        if acc is not None:
            text += f", CV accuracy {100 * acc:.1f}%"
        if self.tta_crops > 1:
            text += f", {self.tta_crops}-crop test-time averaging"
        return text


def _as_batch(waveforms: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    batch = torch.as_tensor(waveforms, dtype=torch.float32)
    if batch.ndim == 1:
        batch = batch[None]
    if batch.ndim != 2 or batch.shape[1] == 0:
        raise BundleError(f"expected mono waveforms shaped [samples] or [batch, samples], got {tuple(batch.shape)}")
    return batch


def load_bundle(
    source: Union[str, Path], device: Union[str, torch.device] = "cpu", tracking_uri: Optional[str] = None,
    tta_crops: Optional[int] = None,
) -> Bundle:
    """Load a bundle folder or the bundle of an MLflow run id, ready to predict.

    ``tta_crops``: test-time crops per window; None takes the bundle's ``trainer.tta_crops`` (0 when absent).
    """
    with bundle_directory(source, tracking_uri) as directory:
        meta = read_meta(directory)
        states = read_member_weights(directory, meta)
        metrics = _read_metrics(directory / METRICS_FILE)
    config = meta["config"]
    model_cfg = _section(ModelConfig, config["model"], "model", str(source))
    features_cfg = _section(FeaturesConfig, config["features"], "features", str(source))
    model_cfg.pretrained = False
    model_cfg.init_from = None
    features, stored_bins = _build_front_end(features_cfg, meta, source)
    models = []
    for state in states:
        try:
            model = create_model(model_cfg, len(meta["class_names"]), features_cfg.normalize, stored_bins,
                                 features_cfg.kind, features_cfg)
        except EscSweepError as err:
            raise BundleError(f"bundle {source}: its config cannot build a model ({err})") from None
        _check_consistency(model, state, meta, source)
        mismatch = _state_mismatch(model, state)
        if mismatch:
            raise BundleError(
                f"bundle {source}: its weights do not fit a {model_cfg.name} built from field 'config.model' by "
                f"this esc_sweep ({mismatch}); was bundle.json edited, or the bundle saved by a version with a "
                f"different model architecture?"
            )
        model.load_state_dict(state)
        models.append(model)
    model = FoldEnsemble(models) if meta.get("members") else models[0]
    if tta_crops is None:
        tta_crops = int((config.get("trainer") or {}).get("tta_crops") or 0)
    if tta_crops < 0:
        raise BundleError(f"test-time crops must be >= 0, got {tta_crops}")
    device = pick_device(str(device)) if isinstance(device, str) else device
    return Bundle(
        source=str(source),
        model=model.to(device).eval(),
        features=features.to(device).eval(),
        class_names=list(meta["class_names"]),
        meta=meta,
        metrics=metrics,
        device=device,
        tta_crops=tta_crops,
    )


def _read_metrics(path: Path) -> Optional[dict[str, Any]]:
    """metrics.json (the full CV result), or None when absent; a damaged one only costs the metrics, with a warning."""
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("%s is damaged or unreadable (%s); the bundle loads without its CV metrics", path, err)
        return None
    return metrics if isinstance(metrics, dict) else None


def _build_front_end(features_cfg: Any, meta: dict[str, Any], source: Any) -> tuple[nn.Module, int]:
    """The feature extractor of the recorded config, checked to give the model the bins it was trained on,
    and the bins it gives (the waveform kinds: 1; the model's own front end makes the recorded ``num_bins``)."""
    try:
        features = build_features(features_cfg).eval()
        clip = max(1, int(round(float(meta["config"]["dataset"]["clip_seconds"]) * int(features_cfg.sample_rate))))
        with torch.inference_mode():
            bins = features(torch.zeros(1, min(clip, 4 * int(features_cfg.sample_rate)))).shape[2]
    except (EscSweepError, ValueError, RuntimeError) as err:
        raise BundleError(f"bundle {source}: its config.features cannot build the front end "
                          f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if model_input_bins(features_cfg, bins) != int(meta["num_bins"]):
        raise BundleError(f"bundle {source}: field 'num_bins' is {meta['num_bins']} but config.features gives "
                          f"{model_input_bins(features_cfg, bins)} frequency bins: bundle.json was edited or "
                          f"damaged; restore it")
    return features, bins


def _check_consistency(model: nn.Module, state: dict[str, torch.Tensor], meta: dict[str, Any], source: Any) -> None:
    """Name the bundle.json field that disagrees with the weights: the input bins or the class count."""
    mean = state.get("standardize.mean")
    if isinstance(mean, torch.Tensor) and mean.ndim >= 3 and mean.shape[2] != int(meta["num_bins"]):
        raise BundleError(f"bundle {source}: field 'num_bins' is {meta['num_bins']} but the weights take "
                          f"{mean.shape[2]} frequency bins: bundle.json was edited or damaged; restore it")
    expected = model.state_dict()
    for name in sorted(classifier_head_names(model)):
        if name in state and name in expected and state[name].ndim >= 1 and \
                state[name].shape[0] != expected[name].shape[0]:
            raise BundleError(f"bundle {source}: field 'class_names' lists {len(meta['class_names'])} classes but "
                              f"the weights' classifier has {state[name].shape[0]} outputs: bundle.json was "
                              f"edited or damaged; restore it")


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
