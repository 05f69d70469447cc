"""EnvNet-v2 (Tokozume, Ushiku and Harada 2017/2018; "Learning from Between-class Examples for Deep
Sound Recognition", ICLR 2018, table 8): a CNN on the raw waveform.

The layers follow the paper's description (and the authors' Chainer model, read to check them):
two 1-D convolutions over time (64 and 16 taps, stride 2) learn a filter bank, max pooling of 64
turns their output into a 64-channel "time-frequency" map that the rest treats as an image: two 8x8
convolutions, pooling (5, 3), four pairs of (1, k) convolutions with pooling, then three fully
connected layers (4096, 4096, classes) with dropout. Every convolution is conv + batch norm + ReLU.

The paper's input is a window of 66 650 samples at 44.1 kHz (about 1.51 s); clips are padded with
half a window of zeros on each side, training takes one random window per clip and testing averages
the softmax of ``eval_crops`` (10) evenly spaced windows. The model does that windowing itself, so
every path that hands it a whole clip (cross-validation, ``predict``, ``serve``) gets the paper's
procedure: in training mode a longer input gives a random window per clip (batched), in eval mode
the log of the averaged crop probabilities (which stand in for logits: argmax and softmax agree).
``input_length`` sets the window; the first fully connected layer is sized from it.

Input: [B, 1, 1, T] (``features.kind=waveform``).
"""

from __future__ import annotations

import torch
from torch import nn

from esc_sweep.models.registry import register_model

PAPER_INPUT_LENGTH = 66650  # samples at 44.1 kHz
PAPER_EVAL_CROPS = 10
EVAL_VIEWS_PER_PASS = 64


def _conv(c_in: int, c_out: int, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1)) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class EnvNetV2(nn.Module):
    def __init__(self, num_classes: int, input_length: int = PAPER_INPUT_LENGTH,
                 eval_crops: int = PAPER_EVAL_CROPS, dropout: float = 0.5):
        super().__init__()
        self.input_length, self.eval_crops = int(input_length), int(eval_crops)
        # The learnt filter bank: 1-D convolutions over time, as (1, k) 2-D ones.
        self.filterbank = nn.Sequential(_conv(1, 32, (1, 64), (1, 2)), _conv(32, 64, (1, 16), (1, 2)),
                                        nn.MaxPool2d((1, 64)))
        # After swapping channels and height: a 64 x frames image with one channel.
        self.features = nn.Sequential(
            _conv(1, 32, (8, 8)), _conv(32, 32, (8, 8)), nn.MaxPool2d((5, 3)),
            _conv(32, 64, (1, 4)), _conv(64, 64, (1, 4)), nn.MaxPool2d((1, 2)),
            _conv(64, 128, (1, 2)), _conv(128, 128, (1, 2)), nn.MaxPool2d((1, 2)),
            _conv(128, 256, (1, 2)), _conv(256, 256, (1, 2)), nn.MaxPool2d((1, 2)),
        )
        with torch.no_grad():
            flat = self._trunk(torch.zeros(1, 1, 1, self.input_length)).shape[1]
        self.head = nn.Sequential(
            nn.Linear(flat, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        h = self.filterbank(x)  # [B, 64, 1, frames]
        return self.features(h.transpose(1, 2)).flatten(1)

    def windows(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """[B, 1, 1, T] -> ([B * n, 1, 1, input_length], n): one random window per clip in training, else
        ``eval_crops`` evenly spaced ones, from the clip padded with half a window of zeros each side."""
        length = self.input_length
        if x.shape[-1] == length:
            return x, 1
        x = nn.functional.pad(x, (length // 2, length // 2))
        total = x.shape[-1]
        if self.training:
            start = torch.randint(0, total - length + 1, (x.shape[0], 1), device=x.device)
            crops = 1
        else:
            crops = max(1, self.eval_crops)
            start = torch.linspace(0, total - length, crops, device=x.device).round().long().expand(x.shape[0], crops)
        index = start.unsqueeze(-1) + torch.arange(length, device=x.device)  # [B, crops, length]
        views = torch.gather(x.reshape(x.shape[0], 1, total).expand(-1, crops, -1), 2, index)
        return views.reshape(x.shape[0] * crops, 1, 1, length), crops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        views, crops = self.windows(x)
        # Evaluation windows in chunks: 64 clips x 10 crops at once would hold ~3 GB after the first conv.
        chunks = views.split(views.shape[0] if self.training else EVAL_VIEWS_PER_PASS)
        logits = torch.cat([self.head(self._trunk(chunk)) for chunk in chunks])
        if crops == 1:
            return logits
        probabilities = torch.softmax(logits.float(), dim=1).reshape(batch, crops, -1).mean(1)
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()


@register_model("envnet_v2")
def envnet_v2(cfg, num_classes: int, **kwargs) -> EnvNetV2:
    """model.kwargs: input_length (samples; the paper's 66 650 at 44.1 kHz), eval_crops (10)."""
    return EnvNetV2(num_classes, dropout=cfg.dropout, **dict(cfg.kwargs))
