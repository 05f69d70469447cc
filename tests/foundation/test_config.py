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

