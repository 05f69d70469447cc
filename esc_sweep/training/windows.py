"""Evaluation of variable-length clips (``dataset.variable_length=true``): the whole clip, as ``predict`` sees it.

Each clip is cut into windows of ``dataset.clip_seconds`` starting at 0, 1, 2, ...
window lengths, the last one zero-padded (``esc_sweep.data.audio.iter_windows``);
the windows' softmax probabilities are averaged, each weighted by its share of
real audio (``Bundle.predict_windows``). The loss is the negative log of the
averaged probability of the true class. The windows of a batch of clips are
built and scored with tensor operations only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from esc_sweep.training import metrics


@torch.inference_mode()
def evaluate_windows(model: nn.Module, data: Any, index: torch.Tensor, cfg: Any, device: torch.device,
                     forward: Any) -> dict[str, Any]:
    """Loss, accuracy, macro-F1, MAP@3 and confusion of ``model`` on the whole clips ``index`` of ``data``
    (a ``loop.TrainingData`` whose spectrograms are ``features.store.WindowedSpectrograms``).
    ``forward(x)``: the model's logits for a batch of spectrograms (autocast, memory format)."""
    model.eval()
    sums = torch.zeros(len(index), data.num_classes, device=device, dtype=torch.float64)
    totals = torch.zeros(len(index), device=device, dtype=torch.float64)
    for x, owner, weight in data.spectrograms.windows(index, cfg.trainer.eval_batch_size):
        probabilities = torch.softmax(forward(x).float(), dim=1).double()
        weight = weight.to(device).double()
        owner = owner.to(device)
        sums.index_add_(0, owner, probabilities * weight[:, None])
        totals.index_add_(0, owner, weight)
    averaged = sums / totals.clamp_min(1e-12)[:, None]
    targets = data.targets[index]
    log_probabilities = averaged.clamp_min(torch.finfo(torch.float64).tiny).log()
    loss = float(-log_probabilities.gather(1, targets[:, None]).sum()) / len(index)
    confusion = metrics.confusion_matrix(targets, averaged.argmax(1), data.num_classes).cpu()
    return {
        "loss": loss,
        "acc": metrics.accuracy(confusion),
        "f1": metrics.macro_f1(confusion),
        "map3": metrics.map_at_k(averaged, targets, 3),
        "confusion": confusion,
    }
