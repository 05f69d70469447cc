"""``create_model``: ``model.*`` -> a ``Classifier`` ready to train, as timm's ``_factory.py``.

A registered name (``registry.list_models()``) is built by its own module's builder; any other
name goes to ``timm.create_model`` with one input channel.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from esc_sweep.config import FeaturesConfig, ModelConfig
from esc_sweep.errors import ConfigError, EscSweepError
from esc_sweep.features.frontends import build_model_front_end, model_input_bins
from esc_sweep.models.classifier import Classifier, Standardize
from esc_sweep.models.registry import is_model, list_models, model_entrypoint


def create_backbone(cfg: ModelConfig, num_classes: int, num_bins: int = 64,
                    features_kind: str | None = None) -> nn.Module:
    """The network alone (no ``Standardize``), for ``num_bins`` frequency bins.

    ``features_kind`` (``features.kind``): what the input is, for families whose input step depends
    on it (EfficientAT); None reads ``model.front_end.kind``, else ``mel``.
    """
    if is_model(cfg.name):
        kind = features_kind or dict(getattr(cfg, "front_end", None) or {}).get("kind") or "mel"
        builder = model_entrypoint(cfg.name)
        return builder(cfg, num_classes, **_accepted(builder, num_bins=num_bins, features_kind=kind))
    if getattr(cfg, "weights", None):
        raise ConfigError(f"model.weights={cfg.weights}: loads into esc_sweep's families "
                          f"({', '.join(list_models())}); for timm models use model.pretrained or model.init_from")
    import timm  # deferred: timm (~6 s), only when a timm model is picked

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


def create_model(cfg: ModelConfig, num_classes: int, normalize: str, num_bins: int,
                 features_kind: str | None = None, features: FeaturesConfig | None = None) -> Classifier:
    """``Classifier(Standardize(normalize), backbone)`` for ``model.*``, frozen as ``model.finetune`` says.

    ``normalize``: ``features.normalize``; ``num_bins``: the spectrogram's frequency bins;
    ``features_kind``: ``features.kind`` of the spectrograms the model will get (see ``create_backbone``).
    ``features``: the whole ``features`` section, for the kinds whose front end is (partly) in the model
    (pcen, leaf: ``Classifier.front_end``); ``num_bins`` is then the bins the store holds, and the
    backbone gets the front end's.
    """
    front_end = build_model_front_end(features) if features is not None else None
    if features is not None:
        num_bins = model_input_bins(features, num_bins)
    model = Classifier(Standardize(normalize, num_bins), create_backbone(cfg, num_classes, num_bins, features_kind),
                       front_end)
    finetune = getattr(cfg, "finetune", "full")
    model.finetune = finetune
    if finetune in ("linear_probe", "freeze_then_unfreeze"):
        if not model.head_parameter_names():
            raise ConfigError(f"model.finetune={finetune}: {cfg.name!r} has no classifier head esc_sweep can find")
        model.freeze_backbone(True)
        model.unfreeze_epoch = int(cfg.unfreeze_epoch) if finetune == "freeze_then_unfreeze" else 0
    return model


def _accepted(builder: Callable[..., nn.Module], **optional: Any) -> dict[str, Any]:
    """The optional arguments ``builder`` takes: a builder registered as ``(cfg, num_classes)``,
    the original public form, keeps working beside ``(cfg, num_classes, **kwargs)`` ones."""
    parameters = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return optional
    return {name: value for name, value in optional.items() if name in parameters}
