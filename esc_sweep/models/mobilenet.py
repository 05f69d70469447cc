"""EfficientAT-style MobileNetV3 (Schmid et al. 2023, "Efficient Large-Scale Audio Tagging via
Transformer-to-CNN Knowledge Distillation"): ``mn01`` ... ``mn10`` are width multipliers 0.1 ... 1.0.

The module layout follows EfficientAT's ``models/mn/model.py`` (the default
configuration: channel-wise squeeze-excitation, MLP head) so its checkpoints
load by name: ``features.<i>`` are torchvision ``Conv2dNormActivation`` /
inverted-residual blocks (``block.<j>``), squeeze-excitation sits in
``block.2.conc_se_layers.0.fc1/fc2`` (Linear layers, unlike torchvision's 1x1
convolutions, which is why torchvision's own ``InvertedResidual`` does not fit),
and the head is ``classifier.2`` (hidden) and ``classifier.5`` (logits).
``convert_state_dict`` drops ``classifier.5`` (the AudioSet logits).

Input: esc_sweep's decibel log-mel [B, 1, mels, frames]. EfficientAT's own
front end gives ``(ln(mel + 1e-5) + 4.5) / 5``; the forward turns decibels into
that scale (10 log10 -> ln), so its weights see the values they were trained on.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

# What EfficientAT's weights were trained with (its AugmentMelSTFT at evaluation): 32 kHz, 25 ms
# window in a 1024-point FFT, 10 ms hop, 128 mel bands up to 15 kHz, no dB floor. Approximate:
# EfficientAT adds pre-emphasis and Kaldi-style triangles, which torchaudio's HTK filters only resemble.
FRONT_END = {
    "kind": "mel", "sample_rate": 32000, "n_fft": 1024, "win_length": 800, "hop_length": 320, "n_mels": 128,
    "f_min": 0.0, "f_max": 15000.0, "top_db": None, "mel_scale": "htk", "normalize": "none",
}

_RELEASES = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
# Named checkpoints (``model.weights=efficientat:mn10_as``): AudioSet-trained releases.
CHECKPOINTS = {
    "efficientat:mn01_as": _RELEASES + "mn01_as_mAP_298.pt",
    "efficientat:mn02_as": _RELEASES + "mn02_as_mAP_378.pt",
    "efficientat:mn04_as": _RELEASES + "mn04_as_mAP_432.pt",
    "efficientat:mn05_as": _RELEASES + "mn05_as_mAP_443.pt",
    "efficientat:mn10_as": _RELEASES + "mn10_as_mAP_471.pt",
}

# ln(power) = dB * ln(10) / 10; EfficientAT's "fast normalisation" is (ln(power) + 4.5) / 5.
_DB_TO_LN = math.log(10) / 10

# input channels, kernel, expanded channels, output channels, squeeze-excitation, activation, stride
# (MobileNetV3-Large, as in torchvision and EfficientAT).
_LARGE = [
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1),
]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8, never more than 10 % down (as MobileNet and EfficientAT do)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


_BatchNorm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class SqueezeExcitation(nn.Module):
    """Channel attention from the mean over frequency and time (EfficientAT's se_dims='c')."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3))
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(scale))))
        return x * scale[:, :, None, None]


class ConcurrentSE(nn.Module):
    """EfficientAT's container of squeeze-excitation layers (one, over channels, by default)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels, make_divisible(channels // reduction))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, kernel: int, expanded: int, c_out: int, use_se: bool, activation: str,
                 stride: int):
        super().__init__()
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(Conv2dNormActivation(c_in, expanded, 1, norm_layer=_BatchNorm, activation_layer=act))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel, stride=stride, groups=expanded,
                                           norm_layer=_BatchNorm, activation_layer=act))
        if use_se:
            layers.append(ConcurrentSE(expanded))
        layers.append(Conv2dNormActivation(expanded, c_out, 1, norm_layer=_BatchNorm, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetAudio(nn.Module):
    """EfficientAT's MN: MobileNetV3-Large on one-channel log-mels, width ``width_mult``."""

    def __init__(self, num_classes: int, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        adjust = lambda c: make_divisible(c * width_mult)  # noqa: E731
        settings = [(adjust(i), k, adjust(e), adjust(o), se, a, s) for i, k, e, o, se, a, s in _LARGE]
        layers: list[nn.Module] = [Conv2dNormActivation(1, settings[0][0], 3, stride=2, norm_layer=_BatchNorm,
                                                        activation_layer=nn.Hardswish)]
        layers += [InvertedResidual(*setting) for setting in settings]
        last_in = settings[-1][3]
        self.num_features = 6 * last_in
        layers.append(Conv2dNormActivation(last_in, self.num_features, 1, norm_layer=_BatchNorm,
                                           activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        hidden = adjust(1280)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(self.num_features, hidden), nn.Hardswish(),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )
        self._init_like_the_original()

    def _init_like_the_original(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.classifier[5]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, mels, frames] decibels -> the hidden layer before the logits."""
        x = (x * _DB_TO_LN + 4.5) / 5.0
        return self.classifier[:5](self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier[5](self.embed(x))


def width_of(name: str) -> float:
    """``efficientat_mn05`` -> 0.5 (EfficientAT's naming: mnXY is width X.Y)."""
    digits = name.rsplit("mn", 1)[1]
    return int(digits) / 10


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An EfficientAT checkpoint -> our keys: the same, less the AudioSet logits layer."""
    return {k: v for k, v in state.items() if not k.startswith("classifier.5.")}
