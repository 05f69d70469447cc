"""Model registry: ``create_model(cfg, num_classes)``, like timm's.

Names registered here (``baseline_cnn``) are built by esc_sweep; any other
name goes to ``timm.create_model`` with one input channel. Every model is
wrapped in ``Classifier``, which standardises the input spectrogram with
statistics it stores, so a saved model is self-contained.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from esc_sweep.config import ModelConfig
from esc_sweep.errors import ConfigError, EscSweepError
from esc_sweep.models.baseline import BaselineCNN

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = builder
        return builder

    return decorator


@register_model("baseline_cnn")
def _baseline_cnn(cfg: ModelConfig, num_classes: int) -> nn.Module:
    return BaselineCNN(num_classes, width=cfg.width, dropout=cfg.dropout)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


class Standardize(nn.Module):
    """(x - mean) / std with per-frequency statistics (dataset) or per clip (instance)."""

    def __init__(self, mode: str, num_bins: int):
        super().__init__()
        self.mode = mode
        self.register_buffer("mean", torch.zeros(1, 1, num_bins, 1))
        self.register_buffer("std", torch.ones(1, 1, num_bins, 1))

    @torch.no_grad()
    def fit(self, spectrograms: torch.Tensor) -> "Standardize":
        """Per-frequency statistics over clips and frames (dataset mode only)."""
        if self.mode == "dataset":
            self.mean.copy_(spectrograms.mean(dim=(0, 1, 3), keepdim=True).view_as(self.mean))
            self.std.copy_(spectrograms.std(dim=(0, 1, 3), keepdim=True).clamp_min(1e-5).view_as(self.std))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "instance":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-5)
            return (x - mean) / std
        if self.mode == "dataset":
            return (x - self.mean) / self.std
        return x


class Classifier(nn.Module):
    """Standardize, then the backbone: decibel spectrogram [B, 1, F, T] -> logits."""

    def __init__(self, standardize: Standardize, backbone: nn.Module):
        super().__init__()
        self.standardize = standardize
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.standardize(x))


def create_backbone(cfg: ModelConfig, num_classes: int) -> nn.Module:
    if cfg.name in _REGISTRY:
        return _REGISTRY[cfg.name](cfg, num_classes)
    import timm

    if not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:5]
        hint = f" Similar timm names: {', '.join(close)}." if close else ""
        raise ConfigError(
            f"model.name={cfg.name!r}: unknown model. Use one of {', '.join(list_models())} "
            f"or any timm model name.{hint}"
        )
    kwargs = dict(cfg.kwargs)
    kwargs.setdefault("drop_rate", cfg.dropout)
    if cfg.drop_path > 0:
        kwargs.setdefault("drop_path_rate", cfg.drop_path)
    try:
        return timm.create_model(
            cfg.name, pretrained=cfg.pretrained, num_classes=num_classes, in_chans=1, **kwargs
        )
    except (OSError, RuntimeError, ValueError) as err:
        if cfg.pretrained:
            raise EscSweepError(
                f"model.pretrained=true: could not load pretrained weights for {cfg.name!r} ({err}). "
                "Check the internet connection, or set model.pretrained=false, or point "
                "model.kwargs.pretrained_cfg_overlay.file at a local weights file."
            ) from err
        raise


def create_model(cfg: ModelConfig, num_classes: int, normalize: str, num_bins: int) -> Classifier:
    return Classifier(Standardize(normalize, num_bins), create_backbone(cfg, num_classes))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
