"""What a CV run is labelled with in MLflow: its tags, its name and its comparability key.

Imports no MLflow (cheap). Every value comes from the resolved config and the
loaded data, never from Hydra's group choices alone: ``model=resnet18
model.name=efficientnet_b2`` trains efficientnet_b2 and is labelled so.

Two CV runs are **comparable** (their mean accuracies may be ranked against
each other) when they were validated on the same clips with the same classes,
the same folds and the same selection protocol; ``esc_sweep.compare_key`` is a
short hash of exactly those, so ``tags.`esc_sweep.compare_key` = '<key>'``
finds every run that may be ranked with a given one.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

# What was trained: the real values (not Hydra's group choices), short names for the UI's columns.
MODEL_TAG = "model"  # model.name (any timm name)
FEATURES_TAG = "features"  # features.kind
AUGMENTATION_TAG = "augmentation"  # augmentation.name
DATASET_TAG = "dataset"  # dataset.name
OPTIMIZER_TAG = "optimizer"  # optimizer.name
SCHEDULER_TAG = "scheduler"  # scheduler.name
# What it was measured on, and how.
FINGERPRINT_TAG = "esc_sweep.dataset_fingerprint"  # the data copy: clip ids, contents, rate, length, labels, folds
NUM_CLASSES_TAG = "esc_sweep.num_classes"
CLASSES_TAG = "esc_sweep.classes"  # "dog,rain,..." or "sha256:<12 hex>" when the list is long
FOLDS_TAG = "esc_sweep.folds"  # the folds that were run, "1,2,3,4,5"
NUM_FOLDS_TAG = "esc_sweep.num_folds"  # how many folds were run
SELECTION_TAG = "esc_sweep.selection"  # trainer.validation: none | inner | test_fold
PROTOCOL_TAG = "esc_sweep.protocol"  # dataset.protocol: cv (folds) | holdout (the official train/test split)
RECIPE_TAG = "esc_sweep.recipe"  # the `experiment` config chosen, or "none"
COMPARE_KEY_TAG = "esc_sweep.compare_key"  # hash of (dataset, fingerprint, classes, folds, selection)
# For people: the dataset as the runs table should show it (``esc50[5 classes]`` for a class subset) and
# the epochs trained, the two things besides model and folds that most often tell runs apart.
DATASET_LABEL_TAG = "esc_sweep.dataset_label"
EPOCHS_TAG = "esc_sweep.epochs"

# Tag key -> config key it is read from.
CONFIG_TAGS = {
    MODEL_TAG: "model.name",
    FEATURES_TAG: "features.kind",
    AUGMENTATION_TAG: "augmentation.name",
    DATASET_TAG: "dataset.name",
    OPTIMIZER_TAG: "optimizer.name",
    SCHEDULER_TAG: "scheduler.name",
}
_MAX_CLASS_LIST = 250  # characters; a longer class list is tagged by its hash


def _short_hash(value: Any, length: int = 12) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def selection_protocol(cfg: Any) -> str:
    """How decisions (early stopping, a sweep's objective) were made: ``trainer.validation``.

    ``none`` (fixed epochs, the test folds only scored), ``inner`` (an inner
    split of the training folds decides) or ``test_fold`` (the reported fold
    decides: optimistic). A config from before that key existed: ``test_fold``
    when early stopping was on (it watched the reported fold), else ``none``.
    """
    validation = OmegaConf.select(cfg, "trainer.validation", default=None)
    if validation is not None and str(validation) != "":
        return str(validation)
    patience = OmegaConf.select(cfg, "trainer.early_stopping_patience", default=0) or 0
    return "test_fold" if int(patience) > 0 else "none"


def recipe(cfg: Any) -> str:
    """The ``experiment`` config chosen on the command line (Hydra's choice), or ``none``."""
    try:
        from hydra.core.hydra_config import HydraConfig  # deferred: hydra (~0.3 s), only inside a Hydra job

        if HydraConfig.initialized():
            choice = HydraConfig.get().runtime.choices.get("experiment")
            if choice:
                return str(choice)
    except Exception:  # a config without Hydra's runtime section
        pass
    return "none"


def classes_label(class_names: Sequence[str]) -> str:
    """The class list as a tag value: the names, comma-separated, or ``sha256:<hash>`` when that is long."""
    joined = ",".join(class_names)
    return joined if len(joined) <= _MAX_CLASS_LIST else f"sha256:{_short_hash(list(class_names))}"


def compare_key(dataset: str, fingerprint: str, class_names: Sequence[str], folds: Sequence[int],
                selection: str) -> str:
    """Equal for runs whose accuracies may be ranked together: same data, classes, folds and selection."""
    return _short_hash({
        "dataset": str(dataset),
        "fingerprint": str(fingerprint),
        "classes": list(map(str, class_names)),
        "folds": sorted(int(f) for f in folds),
        "selection": str(selection),
    })


def folds_label(folds: Sequence[int]) -> str:
    return ",".join(str(int(f)) for f in sorted(folds))


def dataset_label(name: str, num_classes: int, subset: bool) -> str:
    """``esc50``, or ``esc50[5 classes]`` when ``dataset.classes`` kept only some of its classes."""
    return f"{name}[{num_classes} classes]" if subset else name


def run_labels(cfg: Any, class_names: Sequence[str], fingerprint: str) -> dict[str, str]:
    """Every label tag of a CV run (and of its fold runs), from the config and the loaded data."""
    tags = {tag: str(OmegaConf.select(cfg, key)) for tag, key in CONFIG_TAGS.items()}
    folds = [int(f) for f in OmegaConf.select(cfg, "trainer.folds")]
    selection = selection_protocol(cfg)
    subset = OmegaConf.select(cfg, "dataset.classes", default=None) is not None
    tags.update({
        DATASET_LABEL_TAG: dataset_label(tags[DATASET_TAG], len(class_names), subset),
        EPOCHS_TAG: str(OmegaConf.select(cfg, "trainer.epochs", default="?")),
        FINGERPRINT_TAG: str(fingerprint),
        NUM_CLASSES_TAG: str(len(class_names)),
        CLASSES_TAG: classes_label(class_names),
        FOLDS_TAG: folds_label(folds),
        NUM_FOLDS_TAG: str(len(folds)),
        SELECTION_TAG: selection,
        PROTOCOL_TAG: str(OmegaConf.select(cfg, "dataset.protocol", default=None) or "cv"),
        RECIPE_TAG: recipe(cfg),
        COMPARE_KEY_TAG: compare_key(tags[DATASET_TAG], fingerprint, class_names, folds, selection),
    })
    return tags


def folds_phrase(folds: Sequence[int] | str) -> str:
    """``5 folds``, or ``fold 1`` for a single fold."""
    if isinstance(folds, str):
        folds = [int(f) for f in folds.split(",") if f.strip()]
    folds = sorted(folds)
    return f"fold {folds[0]}" if len(folds) == 1 else f"{len(folds)} folds"


def run_name(labels: Mapping[str, str], trial_number: int | None = None) -> str:
    """``resnet18 · esc50[5 classes] · 5 folds · 30 ep`` (``... · fsdkaggle2018 · holdout · ...``): short,
    what tells runs apart first.

    The runs table shows about 20 characters of a name: the model leads; the features kind is
    named only when it is not the default log-mel; ``trial-4-`` in front for a sweep's trial.
    """
    parts = [labels[MODEL_TAG]]
    if labels.get(FEATURES_TAG, "mel") != "mel":
        parts.append(labels[FEATURES_TAG])
    parts.append(labels.get(DATASET_LABEL_TAG) or labels[DATASET_TAG])
    # A holdout's one "fold" is the official test split: say so, not "fold 1".
    parts.append("holdout" if labels.get(PROTOCOL_TAG) == "holdout" else folds_phrase(labels[FOLDS_TAG]))
    if labels.get(EPOCHS_TAG):
        parts.append(f"{labels[EPOCHS_TAG]} ep")
    name = " · ".join(parts)
    return f"trial-{trial_number}-{name}" if trial_number is not None else name


def accuracy_phrase(mean: float, low: float | None = None, high: float | None = None) -> str:
    """``76.8 % ±4.6`` (the half-width of the 95 % interval, in points), or ``76.8 %`` without one."""
    if not math.isfinite(mean):
        return "no accuracy"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{100 * mean:.1f} %"
    return f"{100 * mean:.1f} % ±{100 * (high - low) / 2:.1f}"


def finished_run_name(name: str, mean: float, low: float | None = None, high: float | None = None) -> str:
    """The name a CV run ends with: its accuracy first, so the runs table ranks by eye.

    ``76.8 % ±4.6 · resnet18 ...``; a run without a mean accuracy keeps ``name``.
    """
    return f"{accuracy_phrase(mean, low, high)} · {name}" if math.isfinite(mean) else name
