"""The final fit: one model trained on every clip, after the cross-validation.

Training only: the app saves it as a bundle, logs it and draws its plots.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from esc_sweep.data import ClipSet
from esc_sweep.runtime import pick_device, seed_everything
from esc_sweep.training.callbacks import Callback, CallbackList
from esc_sweep.training.fold import prepare
from esc_sweep.training.distill import fold_targets, read_teacher
from esc_sweep.training.loop import InitWeights, TrainingData, fit


@dataclass
class FinalFit:
    model: nn.Module
    config: DictConfig  # the training config it used (epochs may differ from the CV's)
    clips: ClipSet
    device: torch.device
    training: dict[str, Any]  # epochs, num_clips, train_acc, train_loss, seconds, dataset_fingerprint


def final_fit_config(cfg: DictConfig, cv: Any) -> DictConfig:
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


def final_fit(cfg: DictConfig, cv: Any, callbacks: list[Callback] | None = None,
              init: InitWeights | None = None) -> FinalFit:
    """Train one model on every clip of the dataset (``fold`` 0 for the callbacks).

    ``cv`` (a CVResult) decides the epochs when early stopping was on; the
    final model has no held-out data of its own, so the cross-validation
    estimate is its honest accuracy.
    """
    started = time.perf_counter()
    cfg = final_fit_config(cfg, cv)
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
        # trainer.distill: no clip is held out, so every model of the teacher teaches (probabilities averaged)
        teacher=fold_targets(read_teacher(cfg), cfg, clips, 0, device),
        weights=clips.weights.to(device) if clips.weights is not None else None,  # dataset.unverified_weight
    )
    model, history, _ = fit(cfg, data, device, fold=0, callbacks=CallbackList(callbacks or []), init=init)
    last = history[-1]
    training = {
        "epochs": len(history),
        "num_clips": len(clips),
        "train_acc": last.get("train_acc"),
        "train_loss": last.get("train_loss"),
        "seconds": time.perf_counter() - started,
        "dataset_fingerprint": clips.fingerprint,
    }
    return FinalFit(model=model, config=cfg, clips=clips, device=device, training=training)
