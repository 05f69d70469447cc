"""Fold ensembles: the fold models of a cross-validation kept after it and used as one classifier.

``FoldModels`` is the callback that keeps them (a CPU copy of each fold's weights, as the
fold finishes); ``format.save_ensemble_bundle`` writes them as one bundle and
``FoldEnsemble`` is what that bundle loads as.
"""

from __future__ import annotations

import torch
from torch import nn

from esc_sweep.training.callbacks import Callback


class FoldEnsemble(nn.Module):
    """The fold models of a cross-validation as one classifier: the log of their averaged probabilities.

    Averaging probabilities (not logits) keeps one over-confident member from outvoting the
    others; the logarithm lets the output stand in for logits wherever one model's are used
    (its softmax is the averaged probabilities, its argmax the ensemble's vote).
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()


class FoldModels(Callback):
    """Keeps a CPU copy of each fold's trained weights (the evaluated model: EMA weights when on).

    Folds restored from a checkpoint of an interrupted run were not trained in this process:
    their weights are not kept (``missing`` lists them) and the ensemble is built from the others.
    """

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.missing: list[int] = []

    def on_model_trained(self, fold: int, model: nn.Module) -> None:
        if fold > 0:  # fold 0 is the final fit
            self.states[fold] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def on_fold_end(self, result, resumed: bool = False) -> None:
        if resumed and result.fold not in self.states:
            self.missing.append(result.fold)
