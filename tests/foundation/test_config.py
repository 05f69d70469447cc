"""Every option of every config group composes, and bad values are refused by name."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from esc_sweep.config import validate
from esc_sweep.errors import ConfigError
from tests.conftest import CONF

GROUPS = ["dataset", "features", "model", "augmentation", "optimizer", "scheduler", "trainer", "tracking"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_validates(compose_cfg, group, option):
    overrides = [f"{group}={option}"]
    if option == "folder":
        overrides.append("dataset.root=/tmp/anywhere")
    cfg = compose_cfg(overrides)
    validate(cfg)
    assert OmegaConf.select(cfg, group) is not None


@pytest.mark.parametrize("name", [p.stem for p in (CONF / "experiment").glob("*.yaml")])
def test_every_experiment_composes(compose_cfg, name):
    validate(compose_cfg([f"experiment={name}"]))


def test_group_choice_sets_the_values(compose_cfg):
    cfg = compose_cfg(["model=resnet18", "features=mfcc", "optimizer=sgd", "dataset=esc10"])
    assert cfg.model.name == "resnet18"
    assert cfg.features.kind == "mfcc"
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.nesterov is True
    assert cfg.dataset.esc10 is True and cfg.dataset.kind == "esc50"


@pytest.mark.parametrize(
    "override,key",
    [
        ("optimizer.lr=-0.1", "optimizer.lr"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.epochs=-3", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("trainer.folds=[0,1]", "trainer.folds"),
        ("trainer.folds=[6]", "trainer.folds"),
        ("trainer.folds=[]", "trainer.folds"),
        ("features.kind=wavelet", "features.kind"),
        ("model.dropout=1.5", "model.dropout"),
        ("augmentation.mixup_alpha=-1", "augmentation.mixup_alpha"),
        ("augmentation.crop_seconds=-2", "augmentation.crop_seconds"),
        ("trainer.device=tpu", "trainer.device"),
        ("features.f_max=20000", "features.f_max"),
        ("dataset.num_folds=4", "dataset.num_folds"),
    ],
)
def test_bad_values_are_refused_naming_the_key(compose_cfg, override, key):
    cfg = compose_cfg([override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert key in str(err.value)


def test_all_problems_reported_at_once(compose_cfg):
    cfg = compose_cfg(["optimizer.lr=-1", "trainer.epochs=0"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "optimizer.lr" in str(err.value) and "trainer.epochs" in str(err.value)


def test_default_config_is_valid(compose_cfg):
    validate(compose_cfg())


def test_fbank_needs_n_fft_to_be_the_padded_window(compose_cfg):
    validate(compose_cfg(["features=fbank"]))  # 400-sample window, padded to 512 = n_fft
    with pytest.raises(ConfigError, match=r"features\.n_fft=1024: must be 512 for features\.kind=fbank"):
        validate(compose_cfg(["features=fbank", "features.n_fft=1024"]))



# --------------------------------------------------------------------------
# Each dataset kind has its own keys (issue 27)

SYNTHETIC_ONLY = {"num_classes", "clips_per_class", "synthetic_seed"}


@pytest.mark.parametrize("option", ["esc50", "esc10", "esc50_categories"])
def test_esc50_configs_hold_no_synthetic_or_folder_keys(compose_cfg, option):
    dataset = compose_cfg([f"dataset={option}"]).dataset
    assert not SYNTHETIC_ONLY & set(dataset)
    assert "csv" not in dataset
    # the schema holds the defaults: nothing the ESC-50 loader reads is missing
    assert dataset.download is True and dataset.esc10 is (option == "esc10") and dataset.num_folds == 5


def test_synthetic_and_folder_configs_hold_their_own_keys_with_defaults(compose_cfg):
    synthetic = compose_cfg(["dataset=synthetic"]).dataset
    assert (synthetic.num_classes, synthetic.clips_per_class, synthetic.synthetic_seed) == (5, 20, 0)
    assert "esc10" not in synthetic and "url" not in synthetic
    folder = compose_cfg(["dataset=folder", "dataset.root=/tmp/x"]).dataset
    assert folder.csv is None and "num_classes" not in folder and "download" not in folder


@pytest.mark.parametrize("args,key,owner", [
    (["dataset.num_classes=10"], "dataset.num_classes=10", "applies to dataset.kind=synthetic only"),
    (["dataset=esc10", "+dataset.clips_per_class=3"], "dataset.clips_per_class=3", "applies to dataset.kind=synthetic only"),
    (["dataset=synthetic", "dataset.esc10=true"], "dataset.esc10=true", "applies to dataset.kind=esc50 only"),
    (["dataset=folder", "dataset.num_classes=3"], "dataset.num_classes=3", "applies to dataset.kind=synthetic only"),
    (["dataset.nmu_folds=3"], "dataset.nmu_folds=3", "is not a dataset key"),
])
def test_a_key_of_another_dataset_kind_is_refused_in_one_line(args, key, owner):
    from esc_sweep.config import dataset_override_problems

    problems = dataset_override_problems(args)
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith(f"{key}: {owner}")


def test_keys_of_the_chosen_kind_pass(compose_cfg):
    from esc_sweep.config import dataset_override_problems

    assert dataset_override_problems(["dataset=synthetic", "dataset.num_classes=3", "dataset.clip_seconds=0.5"]) == []
    assert dataset_override_problems(["dataset.classes=[dog,rain]", "dataset.esc10=true", "trainer.epochs=1"]) == []
    assert dataset_override_problems(["dataset=mine", "dataset.anything=1"]) == []  # a user's own config: Hydra checks


def test_cli_refuses_a_key_of_another_kind_with_exit_2():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "esc_sweep", "dataset.num_classes=10", "--cfg", "job"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "dataset.num_classes=10" in lines[0] and "Traceback" not in lines[0]
