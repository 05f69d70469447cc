"""Optimizers and learning-rate schedules, built from config.

Parameter groups carry the transfer-learning knobs: the classifier head learns
at ``lr * optimizer.head_lr_scale``, a backbone layer ``d`` steps below the head
at ``lr * optimizer.layer_decay ** d`` (layer-wise lr decay), and biases and
normalisation weights are not decayed. ``model.finetune=freeze_then_unfreeze``
unfreezes the backbone after ``model.unfreeze_epoch`` epochs of steps (a step
hook on the optimizer, set up by ``build_scheduler``, which knows the steps per epoch).
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from esc_sweep.config import OptimizerConfig, SchedulerConfig
from esc_sweep.errors import ConfigError
from esc_sweep.models.init_from import classifier_head_names

# Dotted class paths a config may name: torch's and timm's optimizers only.
ALLOWED_OPTIMIZER_MODULES = ("torch.optim", "timm.optim")


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Biases and normalisation weights are not regularised.
    return param.ndim <= 1 or name.endswith(".bias")


def _head_names(model: nn.Module) -> set[str]:
    if hasattr(model, "head_parameter_names"):
        return model.head_parameter_names()
    return classifier_head_names(model)


def _layer_key(name: str) -> str:
    """Generic depth key of a parameter: its module path up to the first block index (``features.3``)."""
    parts = name.split(".")[:-1]
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:2])


def layer_depths(model: nn.Module, head: set[str]) -> tuple[dict[str, int], int]:
    """Depth (0 = nearest the input) of every non-head parameter, and the number of depths.

    A backbone may list its layers from input to output (``layer_names()``, relative to it);
    otherwise module paths cut at the first block index are taken in registration order.
    """
    backbone_prefix = "backbone." if hasattr(model, "backbone") else ""
    backbone = getattr(model, "backbone", model)
    listed = backbone.layer_names() if hasattr(backbone, "layer_names") else None
    depths: dict[str, int] = {}
    order: dict[str, int] = {}
    for name, _ in model.named_parameters():
        if name in head:
            continue
        if listed:
            inner = name[len(backbone_prefix):]
            matches = [i for i, prefix in enumerate(listed) if inner.startswith(prefix + ".")]
            depths[name] = matches[-1] if matches else 0
        else:
            depths[name] = order.setdefault(_layer_key(name), len(order))
    count = len(listed) if listed else len(order)
    return depths, count


def param_groups(cfg: OptimizerConfig, model: nn.Module) -> list[dict]:
    """Groups of (lr scale, weight decay); frozen parameters are included, to learn once unfrozen."""
    head = _head_names(model)
    depths, count = layer_depths(model, head)
    layer_decay = getattr(cfg, "layer_decay", 1.0)
    head_scale = getattr(cfg, "head_lr_scale", 1.0)
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        scale = head_scale if name in head else layer_decay ** (count - depths[name])
        decay = 0.0 if _no_decay(name, param) else cfg.weight_decay
        group = groups.setdefault((scale, decay), {"params": [], "weight_decay": decay, "lr": cfg.lr * scale,
                                                   "lr_scale": scale})
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(cfg: OptimizerConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(cfg, model)
    fused = {"fused": True} if device.type == "cuda" else {}
    name = cfg.name.lower()
    if name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **fused)
    elif name == "adam":
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), **fused)
    elif name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)
    else:
        optimizer = _optimizer_from_path(cfg.name)(groups, lr=cfg.lr)
    if getattr(model, "finetune", "full") == "freeze_then_unfreeze" and getattr(model, "frozen", False):
        # build_scheduler knows the steps per epoch: it installs the unfreezing step hook.
        optimizer.esc_sweep_unfreeze = (model, int(model.unfreeze_epoch))
    return optimizer


def _unfreeze_after(optimizer: torch.optim.Optimizer, steps: int) -> None:
    """After ``steps`` optimizer steps, unfreeze the backbone (freeze_then_unfreeze)."""
    model, _ = optimizer.esc_sweep_unfreeze
    taken = 0

    def hook(opt, args, kwargs) -> None:
        nonlocal taken
        taken += 1
        if taken == steps:
            model.freeze_backbone(False)

    optimizer.register_step_post_hook(hook)


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
    """A per-step schedule (each parameter group keeps its lr scale)."""
    total = max(1, steps_per_epoch * epochs)
    if hasattr(optimizer, "esc_sweep_unfreeze"):
        _unfreeze_after(optimizer, optimizer.esc_sweep_unfreeze[1] * steps_per_epoch)
    if cfg.name == "onecycle":
        max_lr = [peak_lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=total, pct_start=cfg.pct_start
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
