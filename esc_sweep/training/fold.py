"""One fold of a cross-validation: the data it trains on, and training and scoring it.

``cv.run_folds`` calls ``run_fold`` for each fold in turn; with ``trainer.parallel_folds``
each worker process of ``parallel.py`` calls the same function, after its own ``prepare``.
"""

from __future__ import annotations

import time

import torch
from omegaconf import DictConfig

from esc_sweep.data import ClipSet, load_clipset
from esc_sweep.errors import ConfigError, OutOfMemoryError
from esc_sweep.features.store import Spectrograms, feature_source
from esc_sweep.runtime import seed_everything
from esc_sweep.training.callbacks import Callback
from esc_sweep.training.checkpoint import FoldCheckpoints
from esc_sweep.training.distill import fold_targets, read_teacher
from esc_sweep.training.loop import InitWeights, TrainingData, fit
from esc_sweep.training.results import FoldResult
from esc_sweep.training.splits import inner_split


def prepare(cfg: DictConfig, device: torch.device) -> tuple[ClipSet, Spectrograms, torch.Tensor]:
    """Load clips, move them to the device and compute their features."""
    clips = load_clipset(cfg.dataset, cfg.features.sample_rate, progress=cfg.trainer.progress)
    spectrograms = feature_source(cfg, clips, device)
    return clips, spectrograms, clips.targets.to(device)


def check_folds(clips: ClipSet, folds) -> None:
    """Every fold used has validation clips and training clips of at least 2 classes (after class selection)."""
    for fold in folds:
        in_fold = clips.folds == fold
        train_classes = int(torch.unique(clips.targets[~in_fold]).numel())
        if int(in_fold.sum()) == 0:
            raise ConfigError(f"trainer.folds: fold {fold} has no clips of the selected data "
                              f"(dataset.classes / dataset.num_folds); drop it from trainer.folds")
        if train_classes < 2:
            raise ConfigError(f"trainer.folds: the training folds of fold {fold} hold {train_classes} class(es); "
                              f"a classifier needs at least 2 (check dataset.classes)")


def run_fold(
    cfg: DictConfig, clips: ClipSet, spectrograms: Spectrograms, targets: torch.Tensor, fold: int,
    device: torch.device, callbacks: Callback, init: InitWeights | None = None,
    checkpoints: FoldCheckpoints | None = None,
) -> FoldResult:
    """Train and score fold ``fold``.

    ``checkpoints``: the run's checkpoint folder. The fold's training state is saved there
    every ``trainer.checkpoint_every`` epochs and resumed from when one is saved already
    (``FoldCheckpoints.save`` of the result deletes it).
    """
    started = time.perf_counter()
    # trainer.distill: the teacher's probabilities for this fold, from a model that never saw it (computed once)
    teacher = fold_targets(read_teacher(cfg), cfg, clips, fold, device)
    seed_everything(cfg.trainer.seed * 1000 + fold, cfg.trainer.deterministic, cfg.trainer.compile)
    folds = clips.folds.to(device)
    train_index, select_index = torch.nonzero(folds != fold).squeeze(1), None
    if cfg.trainer.validation == "inner":
        train_index, select_index = inner_split(train_index, clips.targets, clips.groups,
                                                cfg.trainer.inner_fraction, cfg.trainer.seed * 1000 + fold)
    data = TrainingData(
        spectrograms=spectrograms,
        targets=targets,
        num_classes=clips.num_classes,
        train_index=train_index,
        val_index=torch.nonzero(folds == fold).squeeze(1),
        select_index=select_index,
        teacher=teacher,
        weights=clips.weights.to(device) if clips.weights is not None else None,
    )
    try:
        progress = checkpoints.progress(fold, cfg.trainer.checkpoint_every) if checkpoints is not None else None
        _, history, val = fit(cfg, data, device, fold, callbacks, init, progress)
    except torch.OutOfMemoryError as err:
        raise OutOfMemoryError(
            f"fold {fold}: {device} ran out of memory with trainer.batch_size={cfg.trainer.batch_size}. "
            "Lower trainer.batch_size (or trainer.eval_batch_size), or use a smaller model."
        ) from err
    last = history[-1]
    inner = [h["inner_acc"] for h in history if "inner_acc" in h]
    inner_map3 = [h["inner_map3"] for h in history if "inner_map3" in h]
    return FoldResult(
        val_map3=val.get("map3"),
        inner_map3=inner_map3[-1] if inner_map3 else None,
        inner_acc=inner[-1] if inner else None,
        fold=fold,
        val_acc=val["acc"],
        val_loss=val["loss"],
        val_f1=val["f1"],
        train_acc=last["train_acc"],
        train_loss=last["train_loss"],
        epochs=len(history),
        seconds=time.perf_counter() - started,
        confusion=val["confusion"].tolist(),
        history=history,
    )
