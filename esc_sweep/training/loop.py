"""Training one model, top to bottom: build it, step it, evaluate it.

``train_step`` is the one optimisation step the trainer and the benchmarks
share. ``fit`` trains a model for ``trainer.epochs``, evaluating after each
epoch. A batch is an index tensor into device-resident spectrograms, so the
loop does no per-clip Python work, and the loss is summed on the device and
read once per epoch (one host synchronisation). Given a ``FoldProgress``,
``fit`` saves its whole state every ``trainer.checkpoint_every`` epochs and
resumes from a saved one with the numbers an uninterrupted run gets.

``fit``'s epoch loop reads top to bottom; what happens around it is named beside
it: ``resume`` (a state saved part-way), ``evaluate_epoch`` (the epoch's
evaluations), ``EpochsDone.should_stop`` (early stopping), ``save_checkpoint``
and ``finish`` (the last record's end-of-run fix-ups).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from esc_sweep.errors import NonFiniteLossError
from esc_sweep.features.augment import Augment
from esc_sweep.features.frontends import augment_domain, frames_per_second
from esc_sweep.features.store import Spectrograms
from esc_sweep.models import Classifier, count_parameters, create_model
from esc_sweep.models.init_from import load_backbone_weights
from esc_sweep.training import metrics
from esc_sweep.training.amp import autocast
from esc_sweep.training.callbacks import Callback
from esc_sweep.training.checkpoint import FoldProgress
from esc_sweep.training.optim import build_optimizer, build_scheduler
from esc_sweep.training.tta import evaluate_tta
from esc_sweep.training.windows import evaluate_windows

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """What one training job sees: spectrograms, labels and which rows to use."""

    spectrograms: Spectrograms
    targets: torch.Tensor  # on the device
    num_classes: int
    train_index: torch.Tensor
    val_index: torch.Tensor | None  # the held-out (test) fold; None when training on everything (final fit)
    select_index: torch.Tensor | None = None  # the inner validation split (trainer.validation=inner)
    teacher: Any = None  # distill.TeacherTargets: the teacher's probabilities and the loss (trainer.distill)
    weights: torch.Tensor | None = None  # per-clip loss weight on the device (dataset.unverified_weight); None: 1


@dataclass
class InitWeights:
    """Weights to start a model from (``model.init_from``): a state dict and where it came from."""

    state: dict[str, torch.Tensor]
    source: str
    model_name: str
    width: Any = None


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    if smoothing > 0:
        soft_targets = soft_targets * (1 - smoothing) + smoothing / soft_targets.shape[1]
    return -(soft_targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def kl_divergence(logits: torch.Tensor, soft_targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """KL(targets || softmax(logits)), batch mean: BC learning's loss (augmentation.bc_learning).

    The cross-entropy minus the targets' entropy: the same gradient, but 0 for a perfect fit of a
    mixed label, so the value reads as a distance to the target mixture.
    """
    if smoothing > 0:
        soft_targets = soft_targets * (1 - smoothing) + smoothing / soft_targets.shape[1]
    entropy = -torch.special.xlogy(soft_targets, soft_targets).sum(1).mean()
    return soft_cross_entropy(logits, soft_targets, 0.0) - entropy


@dataclass
class Trainee:
    """Everything one optimisation step touches."""

    model: nn.Module
    forward: nn.Module  # the model, or its torch.compile'd wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: torch.optim.swa_utils.AveragedModel | None
    cfg: DictConfig
    device: torch.device
    distill: Any = None  # distill.TeacherTargets: its loss replaces the cross-entropy


def make_trainee(
    cfg: DictConfig, model: nn.Module, device: torch.device, steps_per_epoch: int, epochs: int | None = None
) -> Trainee:
    """Optimizer, schedule (over ``epochs``, default ``trainer.epochs``), EMA and compiled forward for ``model``."""
    tc = cfg.trainer
    optimizer = build_optimizer(cfg.optimizer, model, device)
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch, epochs or tc.epochs, cfg.optimizer.lr)
    ema = None
    if tc.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True
        )
    forward = torch.compile(model) if tc.compile else model
    return Trainee(model, forward, optimizer, scheduler, ema, cfg, device)


def train_step(trainee: Trainee, x: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """One optimisation step on an (augmented) batch; returns the loss, detached and still on the device."""
    tc = trainee.cfg.trainer
    if tc.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(trainee.cfg, trainee.device):
        logits = trainee.forward(x)
    if trainee.distill is not None:
        loss = trainee.distill.loss(logits, soft_targets, tc.label_smoothing)
    elif trainee.cfg.augmentation.get("bc_learning", False):
        loss = kl_divergence(logits, soft_targets, tc.label_smoothing)
    else:
        loss = soft_cross_entropy(logits, soft_targets, tc.label_smoothing)
    trainee.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if tc.grad_clip > 0:
        nn.utils.clip_grad_norm_(trainee.model.parameters(), tc.grad_clip)
    trainee.optimizer.step()
    trainee.scheduler.step()
    if trainee.ema is not None:
        trainee.ema.update_parameters(trainee.model)
    return loss.detach()


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: TrainingData, index: torch.Tensor, cfg: DictConfig, device: torch.device
) -> dict[str, Any]:
    """Loss, accuracy, macro-F1, MAP@3 and confusion matrix of ``model`` on rows ``index``.

    Variable-length clips (``dataset.variable_length``) are scored whole, over predict's windows
    (``training/windows.py``).
    """
    model.eval()
    if hasattr(data.spectrograms, "windows"):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if cfg.trainer.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(cfg, device):
                return model(x)

        return evaluate_windows(model, data, index, cfg, device, forward)
    loss_sum = torch.zeros((), device=device)
    predictions, top3 = [], []
    for batch_index in index.split(cfg.trainer.eval_batch_size):
        x = data.spectrograms[batch_index]
        if cfg.trainer.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(cfg, device):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, data.targets[batch_index], reduction="sum")
        predictions.append(logits.argmax(1))
        top3.append(logits.topk(min(3, logits.shape[1]), dim=1).indices)
    confusion = metrics.confusion_matrix(data.targets[index], torch.cat(predictions), data.num_classes).cpu()
    return {
        "loss": float(loss_sum) / len(index),
        "acc": metrics.accuracy(confusion),
        "f1": metrics.macro_f1(confusion),
        "map3": metrics.map_from_top(torch.cat(top3), data.targets[index]),  # the top 3 alone: no logits kept
        "confusion": confusion,
    }


def build_model(
    cfg: DictConfig, data: TrainingData, device: torch.device, init: InitWeights | None = None
) -> Classifier:
    model = create_model(cfg.model, data.num_classes, cfg.features.normalize, data.spectrograms.num_bins,
                         cfg.features.kind, cfg.features)
    if init is not None:
        load_backbone_weights(model, init.state, source=init.source, source_model=init.model_name,
                              source_width=init.width)
    # Normalisation statistics come from the training rows only, through the model's front end (as
    # initialised, for a learnt one); only features.normalize=dataset uses them.
    if cfg.features.normalize == "dataset":
        front_end = model.front_end.to(device)
        chunk = 512 if isinstance(front_end, nn.Identity) else 32  # LEAF's filter outputs are 80 x samples per clip
        with torch.no_grad():
            stats = torch.cat([front_end(b).float() for b in data.spectrograms.batches(data.train_index, chunk)])
        model.standardize.fit(stats)
    model = model.to(device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass
class EpochsDone:
    """What the epochs carry forward: epochs done, their records, the last validation, early stopping's count."""

    epoch: int = 0  # epochs done
    history: list[dict[str, float]] = field(default_factory=list)
    val: dict[str, Any] | None = None  # the last evaluation on data.val_index
    best_val: float = -1.0  # the best deciding accuracy so far (early stopping)
    epochs_without_gain: int = 0

    def should_stop(self, record: dict[str, Any], cfg: DictConfig) -> bool:
        """Early stopping: whether ``trainer.early_stopping_patience`` epochs passed without a better score.

        It reads the split trainer.validation names: the inner split (honest) or the test fold
        (optimistic); validate() refuses patience with validation=none.
        """
        tc = cfg.trainer
        deciding = record.get("inner_acc") if tc.validation == "inner" else record.get("val_acc")
        if tc.early_stopping_patience <= 0 or deciding is None:
            return False
        if deciding > self.best_val:
            self.best_val, self.epochs_without_gain = deciding, 0
            return False
        self.epochs_without_gain += 1
        return self.epochs_without_gain >= tc.early_stopping_patience


def _device_rng_state(device: torch.device) -> torch.Tensor | None:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return None


def training_state(trainee: Trainee, generator: torch.Generator, done: EpochsDone) -> dict[str, Any]:
    """Everything the epochs after ``done.epoch`` depend on.

    Random numbers: the epoch order comes from ``generator``; augmentation (torch.rand,
    randint, randperm, Beta on the training device) and dropout draw from the global torch
    generators, the CPU one and the device's. Nothing in training draws from Python's
    ``random`` or NumPy, so their states are not needed.
    """
    return {
        "epoch": done.epoch,
        "model": trainee.model.state_dict(),
        "ema": trainee.ema.state_dict() if trainee.ema is not None else None,
        "optimizer": trainee.optimizer.state_dict(),
        "scheduler": trainee.scheduler.state_dict(),
        "history": done.history,
        "val": done.val,
        "best_val": done.best_val,
        "epochs_without_gain": done.epochs_without_gain,
        "rng": {"cpu": torch.get_rng_state(), "epoch_order": generator.get_state(),
                "device_type": trainee.device.type, "device": _device_rng_state(trainee.device)},
    }


def restore_training_state(state: dict[str, Any], trainee: Trainee, generator: torch.Generator) -> EpochsDone:
    """Load ``state`` (from ``training_state``) into ``trainee`` and the random generators.

    Returns the epochs' progress it holds. Raises ValueError, before changing anything,
    when the state is another model's.
    """
    current = trainee.model.state_dict()
    saved = state["model"]
    if saved.keys() != current.keys() or any(saved[k].shape != v.shape for k, v in current.items()):
        raise ValueError("its weights have other names or shapes")
    if (state["ema"] is None) != (trainee.ema is None):
        raise ValueError("trainer.ema_decay differs")
    trainee.optimizer.load_state_dict(state["optimizer"])  # checks the parameter groups first
    trainee.model.load_state_dict(saved)
    if trainee.ema is not None:
        trainee.ema.load_state_dict(state["ema"])
    trainee.scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["cpu"])
    generator.set_state(rng["epoch_order"])
    if rng["device"] is not None and rng["device_type"] == trainee.device.type:
        if trainee.device.type == "cuda":
            torch.cuda.set_rng_state(rng["device"], trainee.device)
        elif trainee.device.type == "mps":
            torch.mps.set_rng_state(rng["device"])
    return EpochsDone(state["epoch"], state["history"], state["val"], state["best_val"], state["epochs_without_gain"])


def resume(
    progress: FoldProgress | None, trainee: Trainee, generator: torch.Generator, fold: int, callbacks: Callback,
    epochs: int,
) -> EpochsDone:
    """The progress saved part-way in ``progress`` (loaded into ``trainee`` and ``generator``), else a fresh start.

    A resumed fold replays its saved epochs to the callbacks (curves, progress, pruning see every
    epoch, as uninterrupted). A state of another model is ignored with a warning.
    """
    saved = progress.load() if progress is not None else None
    if saved is None:
        return EpochsDone()
    try:
        done = restore_training_state(saved, trainee, generator)
    except ValueError as exc:
        log.warning("fold %d: the state saved in %s does not fit this model (%s); training the fold from the "
                    "start", fold, progress.path, exc)
        return EpochsDone()
    log.info("fold %d: resuming after epoch %d of %d (state saved in %s)", fold, done.epoch, epochs, progress.path)
    for record in done.history:
        callbacks.on_epoch_end(fold, record["epoch"], record)
    return done


def save_checkpoint(
    progress: FoldProgress | None, trainee: Trainee, generator: torch.Generator, done: EpochsDone, epochs: int
) -> None:
    """Save the training state when ``trainer.checkpoint_every`` says so (never after the last epoch)."""
    if progress is not None and progress.due(done.epoch) and done.epoch < epochs:
        progress.save(training_state(trainee, generator, done))


# The values of an epoch record that must be finite, with the words an error uses for them. A NaN
# model still has accuracies (argmax of NaN logits is class 0): only its losses give it away.
CHECKED = {
    "train_loss": "training loss",
    "train_eval_loss": "training-set evaluation loss",
    "inner_loss": "inner validation loss",
    "val_loss": "validation loss",
    "val_f1": "validation F1",
}


def check_finite(record: dict[str, Any], fold: int, cfg: DictConfig) -> None:
    """Raise NonFiniteLossError when a loss (or another metric) of an epoch record is NaN or infinite."""
    bad = [key for key, value in record.items()
           if (key in CHECKED or key.endswith("_acc")) and isinstance(value, float) and not math.isfinite(value)]
    if bad:
        what = ", ".join(f"{CHECKED.get(key, key)} is {record[key]}" for key in bad)
        where = f"fold {fold}" if fold else "final fit"
        raise NonFiniteLossError(
            f"{where}, epoch {record.get('epoch')}: {what}. "
            f"Lower optimizer.lr (now {cfg.optimizer.lr}) or set trainer.grad_clip=1.0."
        )


def evaluate_epoch(
    record: dict[str, Any], eval_model: nn.Module, data: TrainingData, cfg: DictConfig, device: torch.device,
    done: EpochsDone,
) -> None:
    """Add the epoch's evaluations to ``record``: the training rows (every ``trainer.train_eval_every``
    epochs and the last), the inner split and the held-out fold (``done.val``) when there are any."""
    tc = cfg.trainer
    if record["epoch"] == tc.epochs or record["epoch"] % tc.train_eval_every == 0:
        train_eval = evaluate(eval_model, data, data.train_index, cfg, device)
        record["train_acc"] = train_eval["acc"]
        record["train_eval_loss"] = train_eval["loss"]
    if data.select_index is not None and len(data.select_index):
        inner = evaluate(eval_model, data, data.select_index, cfg, device)
        record.update(inner_loss=inner["loss"], inner_acc=inner["acc"], inner_map3=inner["map3"])
    if data.val_index is not None:
        done.val = evaluate(eval_model, data, data.val_index, cfg, device)
        record.update(val_loss=done.val["loss"], val_acc=done.val["acc"], val_f1=done.val["f1"],
                      val_map3=done.val["map3"])
        if "train_acc" in record:
            record["gap"] = record["train_acc"] - done.val["acc"]


def finish(eval_model: nn.Module, data: TrainingData, cfg: DictConfig, device: torch.device, fold: int,
           done: EpochsDone) -> None:
    """End-of-run fix-ups of the last epoch's record: its training accuracy when early stopping came
    between train evaluations, and the test-time-crop accuracy (``trainer.tta_crops``), scored once."""
    last = done.history[-1]
    if "train_acc" not in last:
        train_eval = evaluate(eval_model, data, data.train_index, cfg, device)
        last["train_acc"] = train_eval["acc"]
        last["train_eval_loss"] = train_eval["loss"]
        if done.val is not None:
            last["gap"] = train_eval["acc"] - done.val["acc"]
        check_finite(last, fold, cfg)
    if data.val_index is not None and cfg.trainer.tta_crops > 1:
        last["val_acc_tta"] = evaluate_tta(eval_model, data, data.val_index, cfg, device)["acc"]


def fit(
    cfg: DictConfig,
    data: TrainingData,
    device: torch.device,
    fold: int,
    callbacks: Callback,
    init: InitWeights | None = None,
    progress: FoldProgress | None = None,
) -> tuple[nn.Module, list[dict[str, float]], dict[str, Any] | None]:
    """Train one model; evaluate on ``data.val_index`` after each epoch when given.

    Returns the trained model (the EMA model when enabled), the per-epoch history and the
    last validation evaluation (None without ``data.val_index``). ``fold`` 0 is the final fit
    on all the data. ``progress``: where the training state is saved part-way and, when a
    state is saved there already, resumed from.
    """
    tc = cfg.trainer
    model = build_model(cfg, data, device, init)
    batch_size = min(tc.batch_size, len(data.train_index))
    steps_per_epoch = max(1, len(data.train_index) // batch_size)
    trainee = make_trainee(cfg, model, device, steps_per_epoch)
    trainee.distill = data.teacher
    callbacks.on_fold_start(fold, {"model": model, "num_parameters": count_parameters(model),
                                   "epochs": tc.epochs, "steps_per_epoch": steps_per_epoch})
    augment = Augment(cfg.augmentation, frames_per_second(cfg.features), augment_domain(cfg.features),
                      cfg.features.sample_rate)
    eval_model = trainee.ema if trainee.ema is not None else model
    eye = torch.eye(data.num_classes, device=device)
    generator = torch.Generator(device="cpu").manual_seed(tc.seed * 1000 + fold)
    done = resume(progress, trainee, generator, fold, callbacks, tc.epochs)

    for epoch in range(done.epoch + 1, tc.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = data.train_index[torch.randperm(len(data.train_index), generator=generator).to(device)]
        loss_sum = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            batch_index = order[step * batch_size : (step + 1) * batch_size]
            targets = eye[data.targets[batch_index]]
            if data.weights is not None:  # an unverified label counts dataset.unverified_weight of a verified one
                targets = targets * data.weights[batch_index, None]
            if data.teacher is not None:  # distillation: the teacher's probabilities ride along (mixup mixes both)
                targets = data.teacher.extend(targets, batch_index)
            x, soft_targets = augment(data.spectrograms[batch_index], targets)
            loss_sum += train_step(trainee, x, soft_targets)
            callbacks.on_step_end(fold, step + 1)
        train_loss = float(loss_sum) / steps_per_epoch  # one host synchronisation per epoch
        train_seconds = time.perf_counter() - started
        record = {"epoch": epoch, "train_loss": train_loss, "lr": trainee.scheduler.get_last_lr()[0]}
        evaluate_epoch(record, eval_model, data, cfg, device, done)
        record["epoch_seconds"] = time.perf_counter() - started
        record["train_seconds"] = train_seconds
        record["eval_seconds"] = record["epoch_seconds"] - train_seconds
        check_finite(record, fold, cfg)  # before anyone sees the epoch: a NaN never reaches a table or a pruner
        done.history.append(record)
        done.epoch = epoch
        callbacks.on_epoch_end(fold, epoch, record)
        if done.should_stop(record, cfg):
            break
        save_checkpoint(progress, trainee, generator, done, tc.epochs)

    finish(eval_model, data, cfg, device, fold, done)
    final_model = trainee.ema.module if trainee.ema is not None else model
    callbacks.on_model_trained(fold, final_model)
    return final_model, done.history, done.val
