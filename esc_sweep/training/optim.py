"""Optimizers and learning-rate schedules, built from config."""

from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from esc_sweep.config import OptimizerConfig, SchedulerConfig
from esc_sweep.errors import ConfigError

# Dotted class paths a config may name: torch's and timm's optimizers only.
ALLOWED_OPTIMIZER_MODULES = ("torch.optim", "timm.optim")


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Biases and normalisation weights are not regularised.
    return param.ndim <= 1 or name.endswith(".bias")


def build_optimizer(cfg: OptimizerConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not _no_decay(n, p)]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and _no_decay(n, p)]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = {"fused": True} if device.type == "cuda" else {}
    name = cfg.name.lower()
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **fused)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), **fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)
    return _optimizer_from_path(cfg.name)(groups, lr=cfg.lr)


def _optimizer_from_path(path: str) -> type:
    module_name, _, class_name = path.rpartition(".")
    if not any(module_name == m or module_name.startswith(m + ".") for m in ALLOWED_OPTIMIZER_MODULES):
        raise ConfigError(
            f"optimizer.name={path!r}: use adamw, adam, sgd or a class from "
            f"{' / '.join(ALLOWED_OPTIMIZER_MODULES)}"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"optimizer.name={path!r}: no such optimizer ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer.name={path!r} is not a torch optimizer class")
    return cls


def build_scheduler(
    cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, peak_lr: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule."""
    total = max(1, steps_per_epoch * epochs)
    if cfg.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peak_lr, total_steps=total, pct_start=cfg.pct_start
        )
    if cfg.name == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

    def cosine_with_warmup(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup)
