"""Cross-validation trainer in plain PyTorch.

The story of a run:
1. pick the device and seed everything;
2. load the clips (decoded once, then cached) and move them to the device;
3. turn them into log-spectrograms on the device, once;
4. for each fold: train a fresh model on the other folds, evaluate it on this
   fold after every epoch, save the fold's result so a killed run can resume;
5. aggregate the folds.

A batch is just an index tensor into the device-resident spectrograms, so the
training loop does no per-clip Python work and no host synchronisation: the
loss is summed on the device and read once per epoch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from esc_sweep import metrics
from esc_sweep.augment import Augment
from esc_sweep.callbacks import Callback, CallbackList
from esc_sweep.checkpoint import FoldCheckpoints, config_key
from esc_sweep.data import ClipSet, load_clipset
from esc_sweep.data.cache import default_cache_dir
from esc_sweep.data.feature_cache import cache_key, cached_features
from esc_sweep.errors import ConfigError, NonFiniteLossError, OutOfMemoryError
from esc_sweep.features import build_features, compute_features
from esc_sweep.models import Classifier, count_parameters, create_model
from esc_sweep.optim import build_optimizer, build_scheduler
from esc_sweep.progress import TrainingProgress
from esc_sweep.results import CVResult, FoldResult


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r}, but no CUDA device is available; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"trainer.device={name!r}, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def seed_everything(seed: int, deterministic: bool, compile: bool = False) -> None:
    torch.manual_seed(seed)
    if deterministic:
        if compile:  # torch.compile reads inductor's own flag, which only this call sets
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:  # the same core flag, without importing torch._inductor (~1 s per process)
            torch.set_deterministic_debug_mode("warn")
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


class Spectrograms:
    """Device-resident features for every clip; ``source[index]`` gives a batch.

    With ``features.precompute`` the spectrograms are computed once; otherwise
    they are recomputed from the device-resident waveforms for each batch.
    """

    def __init__(self, cfg: DictConfig, clips: ClipSet, device: torch.device):
        self.extractor = build_features(cfg.features).to(device)
        self.precomputed = bool(cfg.features.precompute)
        if self.precomputed:
            self.data = self._precompute(cfg, clips, device)
        else:
            self.data = clips.waveforms.to(device)
        self.num_bins = self[torch.zeros(1, dtype=torch.long, device=device)].shape[2]

    def _precompute(self, cfg: DictConfig, clips: ClipSet, device: torch.device) -> torch.Tensor:
        def compute() -> torch.Tensor:
            return compute_features(self.extractor, clips.waveforms, device)

        if not (cfg.features.cache and device.type == "cpu"):  # on a GPU computing them takes milliseconds
            return compute()
        folder = default_cache_dir(cfg.dataset.cache_dir) / "features"
        key = cache_key(clips.fingerprint, clips.waveforms, OmegaConf.to_container(cfg.features, resolve=True))
        return cached_features(folder, key, compute)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        if self.precomputed:
            return self.data[index]
        with torch.no_grad():
            return self.extractor(self.data[index])

    def batches(self, index: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        for chunk in index.split(batch_size):
            yield self[chunk]


@dataclass
class TrainingData:
    """What one training job sees: spectrograms, labels and which rows to use."""

    spectrograms: Spectrograms
    targets: torch.Tensor  # on the device
    num_classes: int
    train_index: torch.Tensor
    val_index: torch.Tensor | None  # None when training on everything (final fit)


def autocast(cfg: DictConfig, device: torch.device):
    if cfg.trainer.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    if smoothing > 0:
        soft_targets = soft_targets * (1 - smoothing) + smoothing / soft_targets.shape[1]
    return -(soft_targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: TrainingData, index: torch.Tensor, cfg: DictConfig, device: torch.device
) -> dict[str, Any]:
    """Loss, accuracy, macro-F1 and confusion matrix of ``model`` on rows ``index``."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    predictions = []
    for batch_index in index.split(cfg.trainer.eval_batch_size):
        x = data.spectrograms[batch_index]
        if cfg.trainer.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(cfg, device):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, data.targets[batch_index], reduction="sum")
        predictions.append(logits.argmax(1))
    confusion = metrics.confusion_matrix(data.targets[index], torch.cat(predictions), data.num_classes).cpu()
    return {
        "loss": float(loss_sum) / len(index),
        "acc": metrics.accuracy(confusion),
        "f1": metrics.macro_f1(confusion),
        "confusion": confusion,
    }


def build_model(cfg: DictConfig, data: TrainingData, device: torch.device) -> Classifier:
    model = create_model(cfg.model, data.num_classes, cfg.features.normalize, data.spectrograms.num_bins)
    if cfg.model.init_from:
        from esc_sweep.bundle import load_backbone_weights  # only needed for fine-tuning

        load_backbone_weights(model, cfg.model.init_from)
    # Normalisation statistics come from the training rows only.
    stats = torch.cat([b.float() for b in data.spectrograms.batches(data.train_index, 512)])
    model.standardize.fit(stats)
    model = model.to(device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def train_model(
    cfg: DictConfig,
    data: TrainingData,
    device: torch.device,
    fold: int,
    callbacks: Callback,
    progress: TrainingProgress,
) -> tuple[nn.Module, list[dict[str, float]], dict[str, Any] | None]:
    """Train one model; evaluate on ``data.val_index`` after each epoch when given.

    Returns the model used for evaluation (the EMA model when enabled), the
    per-epoch history and the last validation evaluation.
    """
    tc = cfg.trainer
    model = build_model(cfg, data, device)
    callbacks.on_fold_start(fold, {"model": model, "num_parameters": count_parameters(model)})
    optimizer = build_optimizer(cfg.optimizer, model, device)
    batch_size = min(tc.batch_size, len(data.train_index))
    steps_per_epoch = max(1, len(data.train_index) // batch_size)
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch, tc.epochs, cfg.optimizer.lr)
    augment = Augment(cfg.augmentation, cfg.features.sample_rate / cfg.features.hop_length)
    ema = None
    if tc.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True
        )
    train_step = torch.compile(model) if tc.compile else model
    eval_model = ema if ema is not None else model
    eye = torch.eye(data.num_classes, device=device)
    generator = torch.Generator(device="cpu").manual_seed(tc.seed * 1000 + fold)

    history: list[dict[str, float]] = []
    val = None
    best_val, epochs_without_gain = -1.0, 0
    progress.start_fold(fold, tc.epochs, steps_per_epoch)
    for epoch in range(tc.epochs):
        started = time.perf_counter()
        model.train()
        order = data.train_index[torch.randperm(len(data.train_index), generator=generator).to(device)]
        loss_sum = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            batch_index = order[step * batch_size : (step + 1) * batch_size]
            x, soft_targets = augment(data.spectrograms[batch_index], eye[data.targets[batch_index]])
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(cfg, device):
                logits = train_step(x)
            loss = soft_cross_entropy(logits, soft_targets, tc.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.detach()
            progress.step()

        # One host synchronisation per epoch.
        train_loss = float(loss_sum) / steps_per_epoch
        train_seconds = time.perf_counter() - started
        if not torch.isfinite(torch.tensor(train_loss)):
            raise NonFiniteLossError(
                f"fold {fold}, epoch {epoch + 1}: training loss is {train_loss}. "
                f"Lower optimizer.lr (now {cfg.optimizer.lr}) or set trainer.grad_clip=1.0."
            )
        record = {"epoch": epoch + 1, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0]}
        last_epoch = epoch + 1 == tc.epochs
        if last_epoch or (epoch + 1) % tc.train_eval_every == 0:
            train_eval = evaluate(eval_model, data, data.train_index, cfg, device)
            record["train_acc"] = train_eval["acc"]
            record["train_eval_loss"] = train_eval["loss"]
        if data.val_index is not None:
            val = evaluate(eval_model, data, data.val_index, cfg, device)
            record.update(val_loss=val["loss"], val_acc=val["acc"], val_f1=val["f1"])
            if "train_acc" in record:
                record["gap"] = record["train_acc"] - val["acc"]
        record["epoch_seconds"] = time.perf_counter() - started
        record["train_seconds"] = train_seconds
        record["eval_seconds"] = record["epoch_seconds"] - train_seconds
        history.append(record)
        progress.end_epoch(fold, epoch, {"val_acc": float("nan"), **record})
        callbacks.on_epoch_end(fold, epoch + 1, record)

        if tc.early_stopping_patience > 0 and val is not None:
            if val["acc"] > best_val:
                best_val, epochs_without_gain = val["acc"], 0
            else:
                epochs_without_gain += 1
                if epochs_without_gain >= tc.early_stopping_patience:
                    break
    if "train_acc" not in history[-1]:  # stopped early between train evaluations
        train_eval = evaluate(eval_model, data, data.train_index, cfg, device)
        history[-1]["train_acc"] = train_eval["acc"]
        history[-1]["train_eval_loss"] = train_eval["loss"]
        if val is not None:
            history[-1]["gap"] = train_eval["acc"] - val["acc"]
    final_model = ema.module if ema is not None else model
    callbacks.on_model_trained(fold, final_model)
    return final_model, history, val


def run_fold(
    cfg: DictConfig, clips: ClipSet, spectrograms: Spectrograms, targets: torch.Tensor, fold: int,
    device: torch.device, callbacks: Callback, progress: TrainingProgress,
) -> FoldResult:
    started = time.perf_counter()
    seed_everything(cfg.trainer.seed * 1000 + fold, cfg.trainer.deterministic, cfg.trainer.compile)
    folds = clips.folds.to(device)
    data = TrainingData(
        spectrograms=spectrograms,
        targets=targets,
        num_classes=clips.num_classes,
        train_index=torch.nonzero(folds != fold).squeeze(1),
        val_index=torch.nonzero(folds == fold).squeeze(1),
    )
    try:
        _, history, val = train_model(cfg, data, device, fold, callbacks, progress)
    except torch.OutOfMemoryError as err:
        raise OutOfMemoryError(
            f"fold {fold}: {device} ran out of memory with trainer.batch_size={cfg.trainer.batch_size}. "
            "Lower trainer.batch_size (or trainer.eval_batch_size), or use a smaller model."
        ) from err
    last = history[-1]
    return FoldResult(
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


def checkpoint_dir(cfg: DictConfig) -> Path:
    if cfg.trainer.checkpoint_dir:
        return Path(cfg.trainer.checkpoint_dir).expanduser()
    return original_cwd() / "outputs" / "checkpoints"


def original_cwd() -> Path:
    """The directory the user ran the command in (Hydra may change into its output dir)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def prepare(cfg: DictConfig, device: torch.device) -> tuple[ClipSet, Spectrograms, torch.Tensor]:
    """Load clips, move them to the device and compute their features."""
    clips = load_clipset(cfg.dataset, cfg.features.sample_rate, progress=cfg.trainer.progress)
    spectrograms = Spectrograms(cfg, clips, device)
    return clips, spectrograms, clips.targets.to(device)


def cross_validate(cfg: DictConfig, callbacks: list[Callback] | None = None) -> CVResult:
    """Run the configured folds; returns per-fold and aggregate results."""
    started = time.perf_counter()
    callbacks = CallbackList(callbacks or [])
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    device = pick_device(cfg.trainer.device)
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic, cfg.trainer.compile)
    clips, spectrograms, targets = prepare(cfg, device)

    checkpoints = FoldCheckpoints(checkpoint_dir(cfg) / config_key(cfg, clips.fingerprint))
    if not cfg.trainer.resume or checkpoints.is_complete():
        checkpoints.reset()
    callbacks.on_cv_start({
        "config": cfg,
        "clips": clips,
        "device": device,
        "checkpoints": checkpoints,
        "feature_shape": tuple(spectrograms[torch.zeros(1, dtype=torch.long, device=device)].shape[1:]),
    })

    try:
        results = _run_folds(cfg, clips, spectrograms, targets, device, checkpoints, callbacks)
        cv = CVResult(folds=results, class_names=clips.class_names, seconds=time.perf_counter() - started)
        callbacks.on_cv_end(cv)
    except BaseException as error:  # Ctrl-C included: trackers mark their runs KILLED / FAILED
        callbacks.on_exception(error)
        raise
    # Resuming is for interrupted runs: the next identical command starts afresh.
    checkpoints.mark_complete()
    return cv


def _run_folds(cfg, clips, spectrograms, targets, device, checkpoints, callbacks) -> list[FoldResult]:
    results: list[FoldResult] = []
    with TrainingProgress(cfg.trainer.progress, len(cfg.trainer.folds)) as progress:
        for fold in cfg.trainer.folds:
            result = checkpoints.load(fold)
            resumed = result is not None
            if resumed:
                progress.console.print(f"[yellow]fold {fold}: finished earlier, loaded from {checkpoints.directory}")
            else:
                result = run_fold(cfg, clips, spectrograms, targets, fold, device, callbacks, progress)
                checkpoints.save(result)
            results.append(result)
            callbacks.on_fold_end(result, resumed)
            progress.end_fold()
    return results


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
