"""A bundle in memory: the classifier, its front end and class names, ready to predict."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from esc_sweep.bundle.format import METRICS_FILE, bundle_directory, read_meta, read_weights
from esc_sweep.config import FeaturesConfig, ModelConfig
from esc_sweep.errors import BundleError
from esc_sweep.features.transforms import build_features
from esc_sweep.models import create_model
from esc_sweep.runtime import pick_device


def _section(schema: type, values: dict[str, Any]) -> Any:
    """A typed config section from a saved dict; keys unknown to this version are ignored."""
    known = {f.name for f in fields(schema)}
    return OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in values.items() if k in known})


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
            logits = self.model(self.spectrogram(torch.stack(batch))).float()
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
            batch.append(torch.as_tensor(window, dtype=torch.float32))
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
