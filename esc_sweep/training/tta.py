"""Test-time augmentation: classify several evenly spaced crops of each clip and average them.

The EnvNet and BC-learning results on ESC-50 are "10-crop" numbers: each test
clip is cut into windows at evenly spaced offsets and the windows' outputs are
averaged. Here the crops are taken from the spectrogram (frames), so the
features are computed once per clip.

* Crop length: ``augmentation.crop_seconds`` when the model was trained on crops
  (it has seen windows of exactly that length), else ``DEFAULT_CROP_FRACTION``
  of the clip: a model trained on whole clips sees nearly all of the clip in
  each view, shifted by up to a fifth of its length.
* Offsets: evenly spaced from the start to the end of the clip, first and last
  crop flush with the clip's edges.
* Averaging: the crops' softmax probabilities (as EnvNet does, and as
  ``Bundle.predict`` averages windows of a long recording), returned as their
  logarithm so the result can stand in for logits: its argmax is the
  prediction and its softmax the averaged probabilities.

``trainer.tta_crops`` 0 or 1 turns it off.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from esc_sweep.features.frontends import frames_per_second
from esc_sweep.training import metrics
from esc_sweep.training.amp import autocast

# Crop length for models trained on whole clips (augmentation.crop_seconds=0): 4 s of a 5 s clip.
DEFAULT_CROP_FRACTION = 0.8


def crop_length(total_frames: int, crop_seconds: float, frames_per_second: float) -> int:
    """Frames per crop: ``crop_seconds`` of them when set, else ``DEFAULT_CROP_FRACTION`` of the clip."""
    if crop_seconds > 0:
        frames = round(crop_seconds * frames_per_second)
    else:
        frames = round(DEFAULT_CROP_FRACTION * total_frames)
    return max(1, min(total_frames, frames))


def crop_starts(total_frames: int, frames: int, crops: int) -> torch.Tensor:
    """First frame of each of ``crops`` windows of ``frames`` frames, evenly spaced over the clip."""
    return torch.linspace(0, total_frames - frames, crops).round().long()


def crop_views(x: torch.Tensor, frames: int, crops: int) -> torch.Tensor:
    """[B, C, F, T] -> [B * crops, C, F, frames]; the crops of one clip are consecutive rows."""
    starts = crop_starts(x.shape[-1], frames, crops).to(x.device)
    index = starts[:, None] + torch.arange(frames, device=x.device)  # [crops, frames]
    views = x[..., index]  # [B, C, F, crops, frames]
    return views.permute(0, 3, 1, 2, 4).reshape(x.shape[0] * crops, *x.shape[1:-1], frames)


def averaged_log_probabilities(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, crops: int, frames: int
) -> torch.Tensor:
    """log(mean over crops of softmax(model(crop))) for spectrograms [B, 1, F, T] -> [B, classes]."""
    logits = model(crop_views(x, frames, crops)).float()
    probabilities = torch.softmax(logits, dim=1).reshape(x.shape[0], crops, -1).mean(1)
    return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()


@torch.inference_mode()
def evaluate_tta(model: nn.Module, data: Any, index: torch.Tensor, cfg: Any, device: torch.device) -> dict[str, Any]:
    """Accuracy, macro-F1 and confusion of ``model`` on rows ``index`` of ``data`` (a ``loop.TrainingData``),
    each clip classified from ``trainer.tta_crops`` crops."""
    model.eval()
    crops = int(cfg.trainer.tta_crops)
    steps_per_second = frames_per_second(cfg.features)  # frames, or samples for waveforms

    def forward(views: torch.Tensor) -> torch.Tensor:
        if cfg.trainer.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        with autocast(cfg, device):
            return model(views)

    predictions = []
    clips_per_batch = max(1, cfg.trainer.eval_batch_size // crops)  # a forward pass sees at most eval_batch_size views
    for batch_index in index.split(clips_per_batch):
        x = data.spectrograms[batch_index]
        frames = crop_length(x.shape[-1], cfg.augmentation.crop_seconds, steps_per_second)
        predictions.append(averaged_log_probabilities(forward, x, crops, frames).argmax(1))
    confusion = metrics.confusion_matrix(data.targets[index], torch.cat(predictions), data.num_classes).cpu()
    return {"acc": metrics.accuracy(confusion), "f1": metrics.macro_f1(confusion), "confusion": confusion}
