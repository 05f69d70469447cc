"""The registry is small and knows no model; each family registers itself in its own module."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from esc_sweep.config import ModelConfig
from esc_sweep.errors import ConfigError
from esc_sweep.models import create_model, get_pretrained_cfg, list_models, registry
from esc_sweep.models.registry import PretrainedCfg, model_entrypoint, named_checkpoints, register_model

CONF = Path(registry.__file__).parents[1] / "conf"


def test_the_registry_names_no_model():
    source = Path(registry.__file__).read_text()
    named = [name for name in list_models() if name in source]
    assert len(list_models()) >= 10 and not named, f"registry.py names {named}"


def _package_models() -> list[str]:
    # Models that tests register for themselves (tests/e2e/test_reliability.py) are not esc_sweep's.
    return [name for name in list_models()
            if not inspect.getmodule(model_entrypoint(name)).__name__.startswith("tests.")]


@pytest.mark.parametrize("name", _package_models())
def test_each_model_is_registered_beside_its_class(name):
    """The builder lives in its family's module (not in the package's __init__ or the factory)."""
    module = inspect.getmodule(model_entrypoint(name)).__name__
    assert module.rpartition(".")[2] in ("baseline", "panns", "mobilenet", "hf", "envnet"), module
    pretrained = get_pretrained_cfg(name)
    for key in pretrained.checkpoints:  # a named checkpoint comes with the converter that loads it
        assert named_checkpoints()[key] == pretrained.checkpoints[key] and pretrained.convert is not None
    if pretrained.front_end is not None:
        assert (CONF / "model" / "front_end" / f"{pretrained.front_end}.yaml").is_file()


def test_a_new_model_is_one_registration(monkeypatch):
    """register_model + create_model: the builder gets model.*, num_classes, num_bins and features.kind."""
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))
    monkeypatch.setattr(registry, "_PRETRAINED", dict(registry._PRETRAINED))
    seen = {}

    @register_model("tiny_test_net", PretrainedCfg(checkpoints={"tiny:v1": "https://example.invalid/tiny.pt"},
                                                   convert=dict))
    def tiny(cfg, num_classes, **kwargs):
        seen.update(kwargs, dropout=cfg.dropout)
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    cfg = OmegaConf.structured(ModelConfig(name="tiny_test_net", dropout=0.1))
    model = create_model(cfg, 3, "instance", 16, features_kind="mfcc")
    assert model(torch.randn(2, 1, 16, 10)).shape == (2, 3)
    assert seen == {"num_bins": 16, "features_kind": "mfcc", "dropout": 0.1}
    assert "tiny_test_net" in list_models() and named_checkpoints()["tiny:v1"].endswith("tiny.pt")


def test_an_unregistered_name_is_refused_naming_the_registered_ones():
    with pytest.raises(ConfigError, match="baseline_cnn"):
        model_entrypoint("no_such_net")
