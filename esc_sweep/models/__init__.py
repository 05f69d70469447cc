"""Model registry: ``create_model(cfg, num_classes)``, like timm's.

Names registered here are built by esc_sweep: ``baseline_cnn``, the
audio-pretrained families ``panns_cnn6/10/14`` (``panns.py``),
``efficientat_mn01 ... mn10`` (``mobilenet.py``) and ``hf`` (any transformers
spectrogram classifier, ``hf.py``); any other name goes to
``timm.create_model`` with one input channel. ``model.weights`` loads
pretrained weights into a registered family (``weights.py``). Every model is
wrapped in ``Classifier``, which standardises the input spectrogram with
statistics it stores, so a saved model is self-contained, and which freezes
the backbone for ``model.finetune=linear_probe`` / ``freeze_then_unfreeze``.
"""

from __future__ import annotations

import inspect

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from esc_sweep.config import ModelConfig
from esc_sweep.errors import ConfigError, EscSweepError
from esc_sweep.models import panns
from esc_sweep.models.baseline import BaselineCNN
from esc_sweep.models.hf import architecture_config, build_hf  # imports transformers itself, only when called
from esc_sweep.models.init_from import classifier_head_names

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Register ``builder(cfg, num_classes)`` or ``builder(cfg, num_classes, num_bins)`` under ``name``.

    The two-argument form is the original public one: models registered that way keep working.
    """
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = builder
        return builder

    return decorator


def _takes_num_bins(builder: Callable[..., nn.Module]) -> bool:
    parameters = inspect.signature(builder).parameters.values()
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


@register_model("baseline_cnn")
def _baseline_cnn(cfg: ModelConfig, num_classes: int, num_bins: int) -> nn.Module:
    return BaselineCNN(num_classes, width=cfg.width, dropout=cfg.dropout)


def _with_weights(backbone: nn.Module, cfg: ModelConfig, convert: Callable[[dict], dict]) -> nn.Module:
    """Load ``model.weights`` (a file, URL or named checkpoint) into ``backbone`` through ``convert``."""
    if cfg.weights:
        # deferred: esc_sweep.models.weights imports torchvision (~4 s), only when weights are loaded
        from esc_sweep.models.weights import load_pretrained, read_checkpoint, resolve_weights

        path = resolve_weights(cfg.weights, cfg.weights_sha256)
        load_pretrained(backbone, read_checkpoint(path), convert, source=str(cfg.weights))
    return backbone


def _panns(arch: str):
    def build(cfg: ModelConfig, num_classes: int, num_bins: int) -> nn.Module:
        model = panns.PANN(arch, num_classes, n_mels=num_bins, width=cfg.width, dropout=cfg.dropout)
        return _with_weights(model, cfg, panns.convert_state_dict)

    return build


for _arch in panns.ARCHITECTURES:
    register_model(f"panns_{_arch}")(_panns(_arch))


def _efficientat(name: str):
    def build(cfg: ModelConfig, num_classes: int, num_bins: int, features_kind: str = "mel") -> nn.Module:
        from esc_sweep.models import mobilenet  # deferred: imports torchvision (~4 s): only when this family is picked

        # features.kind=efficientat is EfficientAT's own front end, used as is; any other kind is
        # esc_sweep's plain log-mel, which the model corrects per band for the missing pre-emphasis.
        front_end = "efficientat" if features_kind == "efficientat" else "mel"
        model = mobilenet.MobileNetAudio(num_classes, width_mult=mobilenet.width_of(name), dropout=cfg.dropout,
                                         front_end=front_end)
        return _with_weights(model, cfg, mobilenet.convert_state_dict)

    return build


for _name in ("mn01", "mn02", "mn04", "mn05", "mn10"):
    register_model(f"efficientat_{_name}")(_efficientat(_name))


@register_model("hf")
def _hf(cfg: ModelConfig, num_classes: int, num_bins: int) -> nn.Module:
    source = None
    if cfg.weights:
        from esc_sweep.models.weights import resolve_weights  # deferred: torchvision (~4 s), see _with_weights

        # A local folder is used as is; anything else that is not a file we know is a hub id.
        local = Path(str(cfg.weights)).expanduser()
        source = str(resolve_weights(cfg.weights)) if local.exists() else str(cfg.weights)
    model = build_hf(cfg, num_classes, source)
    if model.model.config.num_mel_bins != num_bins:
        raise ConfigError(f"features.n_mels={num_bins}: model.name=hf ({cfg.weights or 'model.kwargs.hf_config'}) "
                          f"reads {model.model.config.num_mel_bins} mel bins; set features.n_mels to match")
    return model


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


RECALIBRATION_BATCHES = 2  # training batches whose statistics the batch norms evaluate with (Classifier)


class Classifier(nn.Module):
    """Standardize, then the backbone: decibel spectrogram [B, 1, F, T] -> logits.

    ``freeze_backbone(True)`` trains only the classifier head: the other
    parameters stop requiring gradients (so no backward pass runs through them)
    and the backbone's batch-norm statistics stay as loaded (it stays in eval
    mode while the head trains). ``unfreeze_epoch`` is read by the optimizer
    (``training.optim``) for ``model.finetune=freeze_then_unfreeze``.
    """

    def __init__(self, standardize: Standardize, backbone: nn.Module):
        super().__init__()
        self.standardize = standardize
        self.backbone = backbone
        self.frozen = False
        self.finetune = "full"
        self.unfreeze_epoch = 0
        self._recent_inputs: list[torch.Tensor] = []  # the last training batches, for _recalibrate_batch_norm

    def head_parameter_names(self) -> set[str]:
        return classifier_head_names(self)

    def freeze_backbone(self, frozen: bool) -> None:
        self.frozen = frozen
        head = self.head_parameter_names()
        for name, param in self.named_parameters():
            param.requires_grad_(name in head or not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Classifier":
        if not mode and self.training and self._recent_inputs:
            self._recalibrate_batch_norm()
        super().train(mode)
        if mode and self.frozen:
            self.backbone.eval()
            head = self.backbone.get_classifier() if hasattr(self.backbone, "get_classifier") else None
            if isinstance(head, nn.Module):
                head.train()
                if type(self.backbone).__module__.startswith("timm."):
                    _head_dropout_on(self.backbone)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x)
        if self.training and torch.is_grad_enabled() and not self.frozen and not torch.compiler.is_compiling():
            self._recent_inputs = (self._recent_inputs + [x.detach()])[-RECALIBRATION_BATCHES:]
        return self.backbone(x)

    @torch.no_grad()
    def _recalibrate_batch_norm(self) -> None:
        """Batch-norm statistics of the weights as they are now, from the last training batches.

        Evaluation normalises with running statistics, an average over the last ten steps or
        so (momentum 0.1) that starts at mean 0, variance 1. A run of a few steps (5 classes,
        2 epochs: 6 steps) evaluates with statistics that are half the starting values and the
        rest from weights long gone: every clip came out as one class, while the training loss
        was falling. Measured in benchmarks/README.md ("Short runs"). Going to evaluation, the
        statistics are recomputed as a plain average over the last RECALIBRATION_BATCHES
        training batches (augmented as trained) passed through the current weights.
        """
        inputs, self._recent_inputs = self._recent_inputs, []
        norms = [m for m in self.backbone.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
        # Random state (dropout) is saved and restored: evaluation must not shift the training's draws.
        devices = [inputs[0].device] if inputs[0].device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for batch in inputs:
                self.backbone(batch)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def _head_dropout_on(backbone: nn.Module) -> None:
    """timm's dropout before the classifier (``drop_rate``, i.e. ``model.dropout``) on, the rest left in eval.

    As PANNs' and EfficientAT's: a linear probe's head trains with ``model.dropout`` on its input.
    timm applies it in ``forward_head`` either functionally from the model's own flag
    (``F.dropout(x, self.drop_rate, training=self.training)``: ResNet, EfficientNet, MobileNetV3) or
    through a ``head_drop`` / ``head.drop`` module (ViT, ConvNeXt); setting only the root's flag leaves
    every layer below it (batch norm, drop path) in eval mode.
    """
    backbone.training = True
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Dropout) and (name == "head_drop" or name.startswith("head.")):
            module.train()


def create_backbone(cfg: ModelConfig, num_classes: int, num_bins: int = 64,
                    features_kind: str | None = None) -> nn.Module:
    """``features_kind`` (``features.kind``): what the input is, for families whose input step depends on it
    (EfficientAT); None reads ``model.front_end.kind``."""
    if cfg.name in _REGISTRY:
        builder = _REGISTRY[cfg.name]
        if not _takes_num_bins(builder):
            return builder(cfg, num_classes)
        if "features_kind" in inspect.signature(builder).parameters:
            kind = features_kind or dict(getattr(cfg, "front_end", None) or {}).get("kind") or "mel"
            return builder(cfg, num_classes, num_bins, features_kind=kind)
        return builder(cfg, num_classes, num_bins)
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
                 features_kind: str | None = None) -> Classifier:
    """``features_kind``: ``features.kind`` of the spectrograms the model will get (see ``create_backbone``)."""
    model = Classifier(Standardize(normalize, num_bins), create_backbone(cfg, num_classes, num_bins, features_kind))
    finetune = getattr(cfg, "finetune", "full")
    model.finetune = finetune
    if finetune in ("linear_probe", "freeze_then_unfreeze"):
        if not model.head_parameter_names():
            raise ConfigError(f"model.finetune={finetune}: {cfg.name!r} has no classifier head esc_sweep can find")
        model.freeze_backbone(True)
        model.unfreeze_epoch = int(cfg.unfreeze_epoch) if finetune == "freeze_then_unfreeze" else 0
    return model


def portable_model_config(model_cfg: dict) -> dict:
    """The model section for a saved bundle: rebuilds the architecture without fetching any weights.

    The trained weights are in the bundle (``front_end_record`` keeps where the pretrained ones
    came from); an HF model keeps its architecture in ``model.kwargs.hf_config``, read from the
    checkpoint's config (local folder or the Hugging Face cache, both present after training).
    """
    portable = dict(model_cfg)
    weights = portable.get("weights")
    portable["weights"], portable["weights_sha256"] = None, None
    if portable.get("name") == "hf" and weights:
        portable["kwargs"] = {**dict(portable.get("kwargs") or {}), "hf_config": architecture_config(str(weights))}
    return portable


FRONT_END_KEYS = ("kind", "sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max",
                  "top_db", "mel_scale", "normalize")


def front_end_record(config: dict) -> dict:
    """What a bundle records of its front end: the features used, what the weights expected, their source."""
    features = config.get("features", {})
    model = config.get("model", {})
    return {
        "features": {k: features.get(k) for k in FRONT_END_KEYS if k in features},
        "expected_by_weights": dict(model.get("front_end") or {}),
        "weights": model.get("weights"),
        "weights_sha256": model.get("weights_sha256"),
        "finetune": model.get("finetune", "full"),
    }


def front_end_mismatches(model: nn.Module, features: Any) -> dict[str, tuple[Any, Any]]:
    """What a loaded HF checkpoint's own feature extractor expects, against ``features.*``."""
    expected = getattr(getattr(model, "backbone", model), "expected_front_end", {})
    return {k: (getattr(features, k, None), v) for k, v in expected.items() if getattr(features, k, None) != v}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
