"""Result records of a cross-validation, and their aggregation."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from esc_sweep.stats import mean_interval
from esc_sweep.training import metrics


@dataclass
class FoldResult:
    fold: int
    val_acc: float
    val_loss: float
    val_f1: float
    train_acc: float
    train_loss: float
    epochs: int
    seconds: float
    confusion: list[list[int]]  # rows: true class, columns: predicted
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch
    inner_acc: Optional[float] = None  # accuracy on the inner validation split (trainer.validation=inner)
    # Accuracy on the test fold with trainer.tta_crops crops per clip (training/tta.py); None when off.
    # ``fit`` leaves it in the last epoch's record, where it is taken from when not given.
    val_acc_tta: Optional[float] = None
    repeat: int = 0  # which repeat of the CV (trainer.repeats): each repeat trains every fold with its own seed
    # Mean average precision at 3 (FSDKaggle2018's metric; training/metrics.map_at_k) on the test fold / inner split.
    val_map3: Optional[float] = None
    inner_map3: Optional[float] = None

    def __post_init__(self) -> None:
        if self.val_acc_tta is None and self.history:
            self.val_acc_tta = self.history[-1].get("val_acc_tta")

    @property
    def gap(self) -> float:
        """Overfitting gap: train accuracy minus validation accuracy."""
        return self.train_acc - self.val_acc

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gap": self.gap}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FoldResult":
        data = {k: v for k, v in data.items() if k != "gap"}
        return cls(**data)


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# What each trainer.validation means, for every report that shows the numbers.
SELECTION_NOTES = {
    "none": "no selection: fixed epochs, the test folds are only scored",
    "inner": "decisions on an inner split of the training folds; the test folds are only scored",
    "test_fold": "decisions read the test folds: an optimistic estimate",
}


@dataclass
class CVResult:
    folds: list[FoldResult]
    class_names: list[str]
    seconds: float = 0.0
    validation: str = "none"  # trainer.validation: how decisions were made (SELECTION_NOTES)
    # What the accuracies were measured on, so that runs can be compared only with their like:
    # dataset name, data fingerprint, folds (esc-sweep compare pairs runs fold by fold).
    dataset: str = ""
    fingerprint: str = ""
    dataset_folds: int = 0  # folds the data set is split into (5 for ESC-50), whatever trainer.folds runs
    distill: dict[str, Any] | None = None  # trainer.distill: which teacher taught which fold (distill.describe)
    protocol: str = "cv"  # dataset.protocol: cv (folds) or holdout (fold 1 is the official test split)
    objective_metric: str = "acc"  # trainer.objective: acc | map3
    # Where the finished folds are kept; the caller marks the run complete there once its
    # results are safely written (not part of to_dict: a location, not a result).
    checkpoint_dir: Any = field(default=None, compare=False, repr=False)
    checkpoint_dirs: list = field(default_factory=list, compare=False, repr=False)  # one per repeat

    @property
    def pooled_confusion(self) -> list[list[int]]:
        return torch.stack([torch.tensor(f.confusion) for f in self.folds]).sum(0).tolist()

    @property
    def repeats(self) -> int:
        return len({f.repeat for f in self.folds})

    def fold_means(self, name: str = "val_acc") -> list[float]:
        """``name`` per fold, averaged over the repeats: one value per fold, in fold order."""
        by_fold: dict[int, list[float]] = {}
        for f in self.folds:
            by_fold.setdefault(f.fold, []).append(getattr(f, name))
        return [statistics.fmean(by_fold[fold]) for fold in sorted(by_fold)]

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in ("val_acc", "train_acc", "gap", "val_f1", "val_loss", "train_loss"):
            mean, std = _mean_std([getattr(f, name) for f in self.folds])
            out[f"cv_{name}_mean"] = mean
            out[f"cv_{name}_std"] = std
        # The 95 % Student-t interval of the mean accuracy over folds. With repeats, a fold's
        # repeats share its test clips, so the fold (its mean over repeats) is the unit.
        out["cv_val_acc_ci95_low"], out["cv_val_acc_ci95_high"] = mean_interval(self.fold_means("val_acc"))
        if self.repeats > 1:  # how much the mean moves with the seed alone
            by_repeat: dict[int, list[float]] = {}
            for f in self.folds:
                by_repeat.setdefault(f.repeat, []).append(f.val_acc)
            out["cv_val_acc_seed_std"] = _mean_std([statistics.fmean(v) for v in by_repeat.values()])[1]
            out["cv_repeats"] = float(self.repeats)
        inner = [f.inner_acc for f in self.folds]
        if inner and all(v is not None for v in inner):
            out["cv_inner_acc_mean"], out["cv_inner_acc_std"] = _mean_std(inner)
        for name in ("val_map3", "inner_map3"):
            values = [getattr(f, name) for f in self.folds]
            if values and all(v is not None for v in values):
                out[f"cv_{name}_mean"], out[f"cv_{name}_std"] = _mean_std(values)
        tta = [f.val_acc_tta for f in self.folds]
        if tta and all(v is not None for v in tta):
            out["cv_val_acc_tta_mean"], out["cv_val_acc_tta_std"] = _mean_std(tta)
        pooled = torch.tensor(self.pooled_confusion)
        out["pooled_val_acc"] = metrics.accuracy(pooled)
        out["pooled_val_f1"] = metrics.macro_f1(pooled)
        return out

    @property
    def mean_val_acc(self) -> float:
        return self.summary()["cv_val_acc_mean"]

    @property
    def objective(self) -> float:
        """What a sweep maximises: trainer.objective (accuracy or MAP@3) on the inner split with
        trainer.validation=inner, else the test folds' mean."""
        summary = self.summary()
        if self.objective_metric == "map3":
            return summary.get("cv_inner_map3_mean", summary.get("cv_val_map3_mean", float("nan")))
        return summary.get("cv_inner_acc_mean", summary["cv_val_acc_mean"])

    def per_class_accuracy(self) -> dict[str, float]:
        return dict(zip(self.class_names, metrics.per_class_accuracy(torch.tensor(self.pooled_confusion))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "folds": [f.to_dict() for f in self.folds],
            "class_names": self.class_names,
            "pooled_confusion": self.pooled_confusion,
            "per_class_accuracy": self.per_class_accuracy(),
            "seconds": self.seconds,
            "validation": self.validation,
            "selection": SELECTION_NOTES.get(self.validation, self.validation),
            "objective": {"metric": self.objective_metric, "value": self.objective},
            "data": {"dataset": self.dataset, "fingerprint": self.fingerprint, "dataset_folds": self.dataset_folds,
                     "protocol": self.protocol,
                     "folds": sorted({f.fold for f in self.folds}), "repeats": self.repeats},
            **({"distill": self.distill} if self.distill is not None else {}),
        }
