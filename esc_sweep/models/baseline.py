"""A small CNN baseline in the spirit of Piczak (2015): a few conv/pool stages.

Piczak's net used two wide convolutions on log-mel patches; this keeps the
idea (few layers, heavy pooling, dropout) with batch norm and global pooling
so it trains in minutes on a CPU and works for any input size.
Registered as ``baseline_cnn`` (``conf/model/baseline_cnn.yaml``).
"""

from torch import nn

from esc_sweep.models.registry import register_model


def _block(c_in: int, c_out: int) -> nn.Sequential:
    # One conv per stage and early pooling keep it ~2.5x cheaper than resnet18 at width 32.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class BaselineCNN(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            _block(1, width), _block(width, 2 * width), _block(2 * width, 4 * width), _block(4 * width, 8 * width)
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * width, num_classes)
        )

    def forward(self, x):
        return self.head(self.features(x))


@register_model("baseline_cnn")
def baseline_cnn(cfg, num_classes: int, **kwargs) -> BaselineCNN:
    return BaselineCNN(num_classes, width=cfg.width, dropout=cfg.dropout)
