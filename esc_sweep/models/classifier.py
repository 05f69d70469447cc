"""What every model is wrapped in: ``Standardize`` the spectrogram, then the backbone.

``Classifier`` stores the standardisation statistics, so a saved model is self-contained;
it freezes the backbone for ``model.finetune=linear_probe`` / ``freeze_then_unfreeze`` and
recalibrates batch-norm statistics when it goes to evaluation.
"""

from __future__ import annotations

import torch
from torch import nn

from esc_sweep.models.init_from import classifier_head_names


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

    def __init__(self, standardize: Standardize, backbone: nn.Module, front_end: nn.Module | None = None):
        super().__init__()
        # The part of the feature extraction the model holds (features.kind=pcen|leaf,
        # esc_sweep.features.frontends), identity otherwise: it trains with the model and its
        # state is in the model's, hence in the bundle.
        self.front_end = front_end if front_end is not None else nn.Identity()
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
        x = self.standardize(self.front_end(x))
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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
