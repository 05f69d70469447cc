"""PANNs CNN6 / CNN10 / CNN14 (Kong et al. 2020, "PANNs: Large-Scale Pretrained Audio Neural Networks").

The trunk of ``audioset_tagging_cnn/pytorch/models.py`` with the same module
names (``bn0``, ``conv_block1.conv1``, ..., ``fc1``), so an original checkpoint
loads after ``convert_state_dict`` drops what esc_sweep does elsewhere: the
waveform front end (``spectrogram_extractor.*``, ``logmel_extractor.*``: our
features compute the same log-mel, ``conf/front_end/panns.yaml``) and the AudioSet head
(``fc_audioset.*``: a fresh ``head`` is sized for the new classes).

Registered as ``panns_cnn6``, ``panns_cnn10`` and ``panns_cnn14`` (one per ``ARCHITECTURES`` entry;
``conf/model/panns_*.yaml``).

Input: esc_sweep's decibel log-mel [B, 1, mels, frames]; the original trunk
reads [B, 1, frames, mels], so the forward transposes first. ``width`` scales
every layer (64 = the published models); smaller widths are for quick tests
and cannot load the published weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esc_sweep.models.registry import PretrainedCfg, register_model
from esc_sweep.models.weights import load_model_weights

# The front end the published checkpoints were trained with is conf/front_end/panns.yaml (32 kHz,
# 1024-point FFT, 10 ms hop, 64 Slaney mel bands over 50-14000 Hz, power in dB without a floor; bn0
# normalises). esc_sweep's features.kind=mel with those keys is torchlibrosa's log-mel: mean difference
# <= 0.003 dB on a chirp, noise, a clip, the clip at -40 dB and silence (tests/models/test_front_end_fixtures.py).

# Named checkpoints (``model.weights=panns:cnn14``): the authors' Zenodo record 3987831.
CHECKPOINTS = {
    "panns:cnn6": "https://zenodo.org/record/3987831/files/Cnn6_mAP%3D0.343.pth?download=1",
    "panns:cnn10": "https://zenodo.org/record/3987831/files/Cnn10_mAP%3D0.380.pth?download=1",
    "panns:cnn14": "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1",
}

# Keys of the original checkpoints that esc_sweep does not load (front end, AudioSet head).
DROPPED_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.", "fc_audioset.")


class ConvBlock(nn.Module):
    """Two 3x3 conv-BN-ReLU, then average pooling (CNN10, CNN14)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor, pool_size: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool_size)


class ConvBlock5x5(nn.Module):
    """One 5x5 conv-BN-ReLU, then average pooling (CNN6)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor, pool_size: tuple[int, int]) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.bn1(self.conv1(x))), pool_size)


# name: (block type, number of blocks); block i has width * 2**i channels.
ARCHITECTURES = {"cnn6": (ConvBlock5x5, 4), "cnn10": (ConvBlock, 4), "cnn14": (ConvBlock, 6)}


class PANN(nn.Module):
    """A PANNs trunk with a fresh classifier ``head``; ``embed`` gives the ``fc1`` embedding."""

    def __init__(self, arch: str, num_classes: int, n_mels: int = 64, width: int = 64, dropout: float = 0.5):
        super().__init__()
        block, depth = ARCHITECTURES[arch]
        self.family = f"PANNs {arch.upper()}"  # how messages name it (model.weights that do not fit)
        channels = [1] + [width * 2**i for i in range(depth)]
        self.bn0 = nn.BatchNorm2d(n_mels)
        for i in range(depth):
            self.add_module(f"conv_block{i + 1}", block(channels[i], channels[i + 1]))
        self.depth = depth
        self.fc1 = nn.Linear(channels[-1], channels[-1])
        self.dropout = dropout
        self.head = nn.Linear(channels[-1], num_classes)
        self.num_features = channels[-1]
        self._init_like_the_original()

    def _init_like_the_original(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, mels, frames] decibels -> [B, features] (the original's ``embedding`` in eval mode)."""
        x = x.transpose(2, 3)  # the original trunk reads [B, 1, frames, mels]
        # bn0 normalises each mel band: move mels to the channel axis and back.
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(self.depth):
            # CNN14's last block does not pool (its input is already small).
            pool = (1, 1) if (self.depth == 6 and i == 5) else (2, 2)
            x = getattr(self, f"conv_block{i + 1}")(x, pool)
            x = F.dropout(x, p=0.2, training=self.training)
        x = x.mean(dim=3)  # over mel bands
        x = x.max(dim=2).values + x.mean(dim=2)  # max + mean over time
        x = F.dropout(x, p=self.dropout, training=self.training)
        return F.relu(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The dropout before the head follows the head, not the trunk: with model.finetune=linear_probe
        # the frozen trunk stays in eval mode while the head trains, and model.dropout still applies.
        x = F.dropout(self.embed(x), p=self.dropout, training=self.head.training)
        return self.head(x)


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original PANNs checkpoint (``{"model": state}`` or a bare state) -> our trunk's keys."""
    return {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}


def _register(arch: str) -> None:
    def build(cfg, num_classes: int, num_bins: int = 64, **kwargs) -> PANN:
        model = PANN(arch, num_classes, n_mels=num_bins, width=cfg.width, dropout=cfg.dropout)
        return load_model_weights(model, cfg, convert_state_dict)

    checkpoint = f"panns:{arch}"
    register_model(f"panns_{arch}", PretrainedCfg(front_end="panns", checkpoints={checkpoint: CHECKPOINTS[checkpoint]},
                                                  convert=convert_state_dict))(build)


for _arch in ARCHITECTURES:
    _register(_arch)
