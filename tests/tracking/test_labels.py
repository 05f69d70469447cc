"""Run labels: tags from the values that were trained, the comparability key, run names."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from esc_sweep.paths import CONFIG_DIR
from esc_sweep.tracking import labels as L
from tests.conftest import FAST_SYNTHETIC, compose_config

ESC50_LIKE = [f"class_name_{i:02d}" for i in range(50)]


def _labels(overrides: list[str], classes=("a", "b", "c"), fingerprint="f" * 16) -> dict[str, str]:
    return L.run_labels(compose_config(FAST_SYNTHETIC + overrides), list(classes), fingerprint)


def test_tags_carry_the_trained_model_not_the_config_group():
    tags = _labels(["model=resnet18", "model.name=efficientnet_b2", "features=mfcc", "trainer.folds=[1,2,3,4,5]"])
    assert tags[L.MODEL_TAG] == "efficientnet_b2"  # Hydra's choice was resnet18
    assert (tags[L.FEATURES_TAG], tags[L.DATASET_TAG], tags[L.AUGMENTATION_TAG]) == ("mfcc", "synthetic", "none")
    assert tags[L.FOLDS_TAG] == "1,2,3,4,5" and tags[L.NUM_FOLDS_TAG] == "5"
    assert tags[L.NUM_CLASSES_TAG] == "3" and tags[L.CLASSES_TAG] == "a,b,c"
    assert tags[L.FINGERPRINT_TAG] == "f" * 16
    assert tags[L.SELECTION_TAG] == "none" and tags[L.RECIPE_TAG] == "none"
    assert len(tags[L.COMPARE_KEY_TAG]) == 12
    assert L.run_name(tags) == "efficientnet_b2 · mfcc · synthetic · 5 folds · 8 ep"
    assert L.run_name(tags, trial_number=4) == "trial-4-efficientnet_b2 · mfcc · synthetic · 5 folds · 8 ep"
    one = _labels(["trainer.folds=[2]"])
    assert L.run_name(one).endswith(" · fold 2 · 8 ep") and one[L.NUM_FOLDS_TAG] == "1"


def test_run_names_lead_with_what_tells_runs_apart():
    # The default log-mel front end is left out; a class subset is named with its size.
    subset = _labels(["dataset.classes=[class_0,class_1,class_2]", "trainer.folds=[1]", "trainer.epochs=3"])
    assert subset[L.DATASET_LABEL_TAG] == "synthetic[3 classes]" and subset[L.EPOCHS_TAG] == "3"
    assert L.run_name(subset) == "baseline_cnn · synthetic[3 classes] · fold 1 · 3 ep"
    assert _labels([])[L.DATASET_LABEL_TAG] == "synthetic"  # all classes: the dataset's own name
    # A finished run's name starts with its accuracy and the half-width of its 95 % interval.
    assert L.finished_run_name("x", 0.768, 0.722, 0.814) == "76.8 % ±4.6 · x"
    assert L.finished_run_name("x", 0.5, float("nan"), float("nan")) == "50.0 % · x"  # one fold: no interval
    assert L.finished_run_name("x", float("nan")) == "x"


def test_selection_protocol_is_trainer_validation():
    assert L.selection_protocol(compose_config(FAST_SYNTHETIC)) == "none"
    for validation in ("inner", "test_fold"):
        cfg = compose_config(FAST_SYNTHETIC + [f"trainer.validation={validation}", "trainer.early_stopping_patience=5"])
        assert L.selection_protocol(cfg) == validation


def test_selection_protocol_of_a_config_without_trainer_validation():
    """A config from before trainer.validation: early stopping read the reported (test) fold."""
    assert L.selection_protocol(OmegaConf.create({"trainer": {"early_stopping_patience": 5}})) == "test_fold"
    assert L.selection_protocol(OmegaConf.create({"trainer": {"early_stopping_patience": 0}})) == "none"


def test_compare_key_ignores_the_model_and_separates_data_classes_folds_and_selection():
    base = _labels(["trainer.folds=[1,2,3]"])
    key = base[L.COMPARE_KEY_TAG]
    # What was trained does not matter: these runs are ranked together.
    for overrides in (["model.name=resnet18"], ["features=mfcc"], ["optimizer.lr=0.5", "augmentation=mixup"],
                      ["trainer.folds=[3,1,2]"]):
        assert _labels(["trainer.folds=[1,2,3]", *overrides])[L.COMPARE_KEY_TAG] == key, overrides
    # What it was measured on does.
    assert _labels(["trainer.folds=[1,2]"])[L.COMPARE_KEY_TAG] != key
    for validation in ("inner", "test_fold"):
        assert _labels(["trainer.folds=[1,2,3]", f"trainer.validation={validation}"])[L.COMPARE_KEY_TAG] != key
    assert _labels(["trainer.folds=[1,2,3]"], classes=("a", "b"))[L.COMPARE_KEY_TAG] != key
    assert _labels(["trainer.folds=[1,2,3]"], fingerprint="0" * 16)[L.COMPARE_KEY_TAG] != key
    # (FAST_SYNTHETIC's dataset.* keys are synthetic-only: ESC-10 takes the rest of it.)
    esc10 = [o for o in FAST_SYNTHETIC if not o.startswith("dataset")] + ["dataset=esc10", "trainer.folds=[1,2,3]"]
    assert L.run_labels(compose_config(esc10), ["a", "b", "c"], "f" * 16)[L.COMPARE_KEY_TAG] != key


def test_a_long_class_list_is_tagged_by_its_hash():
    tags = _labels([], classes=ESC50_LIKE)
    assert tags[L.NUM_CLASSES_TAG] == "50"
    assert tags[L.CLASSES_TAG].startswith("sha256:") and len(tags[L.CLASSES_TAG]) == len("sha256:") + 12
    assert _labels([], classes=ESC50_LIKE[::-1])[L.CLASSES_TAG] != tags[L.CLASSES_TAG]  # order is part of it


def test_recipe_is_the_experiment_group_choice():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="config", overrides=["experiment=quick_cpu"], return_hydra_config=True)
    try:
        HydraConfig.instance().set_config(cfg)
        assert L.recipe(cfg) == "quick_cpu"
        assert L.run_labels(cfg, ["a", "b"], "f")[L.RECIPE_TAG] == "quick_cpu"
    finally:
        HydraConfig.instance().cfg = None
    assert L.recipe(cfg) == "none"  # without Hydra's runtime


@pytest.mark.parametrize("recipe", ["esc50_cnn", "esc50_resnet", "quick_cpu"])
def test_recipes_log_to_the_default_experiment(recipe):
    """One naming rule (docs/tracking.md): a recipe is a tag, not an experiment of its own."""
    assert compose_config([f"experiment={recipe}"]).tracking.experiment_name == "esc_sweep"
