"""The model registry, as timm's ``_registry.py``: names -> builders, and what each one's weights expect.

It knows no model by name: each family registers its own in its module, beside the class
(``@register_model("my_net", pretrained_cfg=...)``), and ``esc_sweep.models`` imports those
modules. ``esc_sweep.models.create_model`` (``factory.py``) builds a registered name, or hands any
other name to timm.

A builder is called as ``builder(cfg, num_classes, num_bins=..., features_kind=...)``: ``cfg``
is ``model.*`` (``ModelConfig``), ``num_bins`` the spectrogram's frequency bins, ``features_kind``
``features.kind``; a builder that names neither (or takes ``**kwargs``) gets only what it takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from torch import nn

from esc_sweep.errors import ConfigError


@dataclass(frozen=True)
class PretrainedCfg:
    """What a model's published weights come with, as timm's ``pretrained_cfg``.

    ``front_end``: the conf/front_end option (``conf/front_end/<name>.yaml``) holding the ``features.*``
    values the weights were trained with; the model's yaml composes that file, so it is written once.
    ``checkpoints``: named checkpoints ``model.weights`` may give (``family:name`` -> URL).
    ``convert``: the original checkpoint's state dict -> this module's names.
    """

    front_end: Optional[str] = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    convert: Optional[Callable[[dict], dict]] = None


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_PRETRAINED: dict[str, PretrainedCfg] = {}


def register_model(name: str, pretrained_cfg: Optional[PretrainedCfg] = None):
    """Register ``builder(cfg, num_classes, **kwargs)`` under ``name`` (a decorator, or call it on a builder)."""
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = builder
        _PRETRAINED[name] = pretrained_cfg or PretrainedCfg()
        return builder

    return decorator


def is_model(name: str) -> bool:
    return name in _BUILDERS


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    if name not in _BUILDERS:
        raise ConfigError(f"model.name={name!r}: not a registered model ({', '.join(list_models())})")
    return _BUILDERS[name]


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    return _PRETRAINED.get(name) or PretrainedCfg()


def named_checkpoints() -> dict[str, str]:
    """Every registered family's named checkpoints (``model.weights=family:name``) -> URL."""
    return {key: url for cfg in _PRETRAINED.values() for key, url in cfg.checkpoints.items()}
