"""Classification metrics from a confusion matrix (rows: true class, columns: predicted)."""

from __future__ import annotations

import torch


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def accuracy(confusion: torch.Tensor) -> float:
    return float(confusion.diagonal().sum() / confusion.sum().clamp_min(1))


def macro_f1(confusion: torch.Tensor) -> float:
    """Mean F1 over the classes present in targets or predictions."""
    confusion = confusion.double()
    true_pos = confusion.diagonal()
    predicted = confusion.sum(0)
    actual = confusion.sum(1)
    present = (predicted + actual) > 0
    f1 = 2 * true_pos / (predicted + actual).clamp_min(1)
    return float(f1[present].mean()) if present.any() else 0.0


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    return (confusion.diagonal().double() / confusion.sum(1).clamp_min(1)).tolist()


def map_at_k(scores: torch.Tensor, targets: torch.Tensor, k: int = 3) -> float:
    """Mean average precision at ``k`` with one true label per clip (the FSDKaggle2018 challenge's MAP@3).

    A clip scores 1 when its label is the top prediction, 1/2 when second, ..., 1/k when k-th, 0 otherwise;
    the mean over clips. With one label per clip this is the challenge's definition exactly.
    """
    return map_from_top(scores.topk(min(k, scores.shape[1]), dim=1).indices, targets)


def map_from_top(top: torch.Tensor, targets: torch.Tensor) -> float:
    """:func:`map_at_k` from the top-k class indices ``[N, k]`` (best first): enough to keep per batch."""
    if len(targets) == 0:
        return float("nan")
    hits = top == targets.to(top.device)[:, None]
    rank_weight = 1.0 / torch.arange(1, top.shape[1] + 1, device=top.device, dtype=torch.float64)
    return float((hits.double() * rank_weight).sum(1).mean())
