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

Front end. EfficientAT's weights saw ``(ln(mel + 1e-5) + 4.5) / 5`` of a pre-emphasised
(``x[n+1] - 0.97 x[n]``), symmetric-Hann, 800-sample-window STFT through Kaldi's mel triangles
(its ``AugmentMelSTFT`` in eval mode). Two inputs reach the model:

- ``features.kind=efficientat`` (``esc_sweep.features.transforms.EfficientATMel``, what
  ``conf/model/efficientat_*.yaml`` select) computes exactly that from a waveform, as decibels of
  the mel power (esc_sweep's convention for every spectrogram); the model's ``prepare`` then adds
  EfficientAT's 1e-5 and takes the natural log. Checked against the authors' code on fixed signals,
  through the run path (tests/models/test_front_end_fixtures.py): correlation 1.0000, mean
  difference <= 0.0003.
- ``features.kind=mel`` (esc_sweep's plain log-mel, e.g. ``features.kind=mel`` on the command line)
  has no pre-emphasis and HTK triangles. A mel spectrogram cannot be un-pre-emphasised exactly, so
  ``prepare`` multiplies each band by the pre-emphasis filter's mean power gain over that band:
  correlation 0.995-1.000 and mean difference 0.0006-0.023 on the same signals (before: 0.70-0.92
  and 1.1-2.3). The registered builder tells the model which of the two it gets (``front_end``, from
  ``features.kind``).

Registered as ``efficientat_mn01`` ... ``efficientat_mn10``, one per published checkpoint (``CHECKPOINTS``;
``conf/model/efficientat_*.yaml``).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

# The exact front end lives with the other feature kinds (features.kind=efficientat); re-exported here.
from esc_sweep.features.transforms import PRE_EMPHASIS, EfficientATMel, kaldi_mel_filters  # noqa: F401
from esc_sweep.models.registry import PretrainedCfg, register_model
from esc_sweep.models.weights import load_model_weights

# EfficientAT's weights were trained with conf/front_end/efficientat.yaml (its AugmentMelSTFT at
# evaluation): 32 kHz, 25 ms window in a 1024-point FFT, 10 ms hop, 128 mel bands up to 15 kHz, no dB
# floor, pre-emphasis and Kaldi's triangles (features.kind=efficientat; mel_scale does not apply to it).
N_MELS = 128

_RELEASES = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
# Named checkpoints (``model.weights=efficientat:mn10_as``): AudioSet-trained releases.
CHECKPOINTS = {
    "efficientat:mn01_as": _RELEASES + "mn01_as_mAP_298.pt",
    "efficientat:mn02_as": _RELEASES + "mn02_as_mAP_378.pt",
    "efficientat:mn04_as": _RELEASES + "mn04_as_mAP_432.pt",
    "efficientat:mn05_as": _RELEASES + "mn05_as_mAP_443.pt",
    "efficientat:mn10_as": _RELEASES + "mn10_as_mAP_471.pt",
}

# EfficientAT's front end: the offset inside its log (its pre-emphasis coefficient, PRE_EMPHASIS, is in
# esc_sweep.features.transforms with EfficientATMel), and its
# "fast normalisation" (ln(mel + 1e-5) + 4.5) / 5.
LOG_OFFSET = 1e-5
NORM_SHIFT, NORM_SCALE = 4.5, 5.0


def pre_emphasis_band_gain(n_mels: int = 128, n_fft: int = 1024, sample_rate: int = 32000, f_min: float = 0.0,
                           f_max: float = 15000.0) -> torch.Tensor:
    """Mean power gain of the pre-emphasis filter over each of esc_sweep's HTK mel bands [n_mels].

    |1 - 0.97 e^{-jw}|^2 ranges from 0.0009 at 0 Hz to 3.9 at Nyquist; a mel spectrogram computed
    without pre-emphasis times this gain is what it would have been with it: exactly for a flat
    spectrum inside each band, approximately otherwise. Worst case, a pure tone below a few hundred
    Hz, where the gain changes several-fold within one band: up to 0.5 off in the model's units.
    """
    filters = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, None, "htk")
    omega = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * math.pi / (n_fft // 2)
    response = 1 + PRE_EMPHASIS**2 - 2 * PRE_EMPHASIS * torch.cos(omega)
    filters = filters.double()
    return ((filters * response[:, None]).sum(0) / filters.sum(0).clamp_min(1e-12)).float()


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
        # deferred: torchvision takes ~4 s to import; only building this family needs it
        from torchvision.ops.misc import Conv2dNormActivation

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

    def __init__(self, num_classes: int, width_mult: float = 1.0, dropout: float = 0.2, front_end: str = "mel"):
        """``front_end``: what the input is, ``mel`` (esc_sweep's plain HTK log-mel, corrected per band for
        the missing pre-emphasis) or ``efficientat`` (``EfficientATMel``'s output, used as is)."""
        # deferred: torchvision takes ~4 s to import; only building this family needs it
        from torchvision.ops.misc import Conv2dNormActivation

        super().__init__()
        if front_end not in ("mel", "efficientat"):
            raise ValueError(f"front_end={front_end!r}: expected 'mel' or 'efficientat'")
        self.front_end = front_end
        self.family = f"EfficientAT mn{round(width_mult * 10):02d}"  # how messages name it
        # Not in the state dict: derived from the front end, and EfficientAT's checkpoints do not have it.
        gain = pre_emphasis_band_gain() if front_end == "mel" else torch.ones(N_MELS)
        self.register_buffer("band_gain", gain.view(1, 1, -1, 1), persistent=False)
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

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Decibels of mel power [B, 1, mels, frames] -> EfficientAT's input ``(ln(mel + 1e-5) + 4.5) / 5``."""
        power = torch.pow(10.0, x / 10.0)
        if power.shape[2] == self.band_gain.shape[2]:  # other band counts: no pretrained weights to match
            power = power * self.band_gain
        return (torch.log(power + LOG_OFFSET) + NORM_SHIFT) / NORM_SCALE

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, mels, frames] decibels -> the hidden layer before the logits (no dropout)."""
        return self.classifier[:4](self.features(self.prepare(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The dropout before the logits follows the head, not the backbone: with model.finetune=linear_probe
        # the frozen backbone stays in eval mode while the head trains, and model.dropout still applies.
        head = self.classifier[5]
        return head(F.dropout(self.embed(x), p=self.classifier[4].p, training=head.training))


def width_of(name: str) -> float:
    """``efficientat_mn05`` -> 0.5 (EfficientAT's naming: mnXY is width X.Y)."""
    digits = name.rsplit("mn", 1)[1]
    return int(digits) / 10


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An EfficientAT checkpoint -> our keys: the same, less the AudioSet logits layer."""
    return {k: v for k, v in state.items() if not k.startswith("classifier.5.")}


def _register(checkpoint: str) -> None:
    """``efficientat:mn05_as`` -> the model ``efficientat_mn05`` (width 0.5) that loads it."""
    name = "efficientat_" + checkpoint.split(":", 1)[1].removesuffix("_as")

    def build(cfg, num_classes: int, features_kind: str = "mel", **kwargs) -> MobileNetAudio:
        # features.kind=efficientat is EfficientAT's own front end, used as is; any other kind is
        # esc_sweep's plain log-mel, which the model corrects per band for the missing pre-emphasis.
        front_end = "efficientat" if features_kind == "efficientat" else "mel"
        model = MobileNetAudio(num_classes, width_mult=width_of(name), dropout=cfg.dropout, front_end=front_end)
        return load_model_weights(model, cfg, convert_state_dict)

    register_model(name, PretrainedCfg(front_end="efficientat", checkpoints={checkpoint: CHECKPOINTS[checkpoint]},
                                       convert=convert_state_dict))(build)


# One model per published checkpoint width (mn01, mn02, mn04, mn05, mn10).
for _checkpoint in CHECKPOINTS:
    _register(_checkpoint)
