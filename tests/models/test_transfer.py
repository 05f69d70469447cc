"""Fine-tuning modes, layer-wise lr decay, front-end checks and what a bundle records."""

from __future__ import annotations

import logging

import pytest
import torch

from esc_sweep.config import validate
from esc_sweep.errors import ConfigError
from esc_sweep.models import create_model, front_end_record, portable_model_config
from esc_sweep.training.loop import make_trainee, train_step
from esc_sweep.training.optim import param_groups

TINY_PANNS = ["model=panns_cnn6", "model.width=4", "trainer.epochs=3", "trainer.channels_last=false",
              "trainer.ema_decay=0"]


def _model_and_trainee(compose_cfg, overrides, steps_per_epoch=2):
    cfg = compose_cfg(TINY_PANNS + overrides)
    validate(cfg)
    model = create_model(cfg.model, 3, cfg.features.normalize, cfg.features.n_mels)
    trainee = make_trainee(cfg, model, torch.device("cpu"), steps_per_epoch=steps_per_epoch)
    return model, trainee


def _step(trainee, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 64, 40, generator=g) * 10 - 40
    targets = torch.eye(3)[torch.tensor([0, 1, 2, 0])]
    trainee.model.train()
    return train_step(trainee, x, targets)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_linear_probe_trains_only_the_head(compose_cfg):
    model, trainee = _model_and_trainee(compose_cfg, ["model.finetune=linear_probe"])
    before = _snapshot(model)
    _step(trainee)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"backbone.head.weight", "backbone.head.bias"}  # batch-norm statistics included
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["backbone.head.weight",
                                                                           "backbone.head.bias"]


@pytest.mark.parametrize("overrides,frames", [(["model=panns_cnn6", "model.width=4", "model.dropout=0.5"], 40),
                                              (["model=efficientat_mn01", "model.dropout=0.5"], 40)])
def test_linear_probe_keeps_the_dropout_before_the_head(overrides, frames, compose_cfg):
    """model.dropout applies in linear_probe training (the frozen trunk is in eval mode, the head is not)."""
    cfg = compose_cfg(overrides + ["model.finetune=linear_probe"])
    model = create_model(cfg.model, 3, cfg.features.normalize, cfg.features.n_mels)
    x = torch.randn(2, 1, cfg.features.n_mels, frames, generator=torch.Generator().manual_seed(0)) * 10 - 40
    model.train()
    assert not model.backbone.training and model.backbone.get_classifier().training
    with torch.no_grad():
        torch.manual_seed(1)
        first = model(x)
        second = model(x)
        assert not torch.allclose(first, second)  # dropout draws differ: it is on
        model.eval()
        assert torch.equal(model(x), model(x))  # and off for evaluation


@pytest.mark.parametrize("name", ["resnet10t", "convnext_atto"])
def test_linear_probe_keeps_timms_dropout_before_the_head(name, compose_cfg):
    """timm models too: model.dropout (timm's drop_rate) is on before the head while a linear probe trains,
    every other layer stays in eval mode (batch-norm statistics untouched), and it is off for evaluation."""
    cfg = compose_cfg([f"model.name={name}", "model.dropout=0.5", "model.finetune=linear_probe"])
    model = create_model(cfg.model, 3, cfg.features.normalize, cfg.features.n_mels)
    x = torch.randn(2, 1, cfg.features.n_mels, 40, generator=torch.Generator().manual_seed(0)) * 10 - 40
    model.train()
    layers = [m for n, m in model.backbone.named_modules() if n and not isinstance(m, torch.nn.Dropout)]
    assert not any(m.training for m in layers if m is not model.backbone.get_classifier())
    before = _snapshot(model)
    with torch.no_grad():
        torch.manual_seed(1)
        first = model(x)
        second = model(x)
        assert not torch.allclose(first, second)  # dropout draws differ: it is on
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # no statistics moved
        model.eval()
        assert torch.equal(model(x), model(x))  # and off for evaluation
    cfg = compose_cfg([f"model.name={name}", "model.dropout=0", "model.finetune=linear_probe"])
    model = create_model(cfg.model, 3, cfg.features.normalize, cfg.features.n_mels).train()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # model.dropout=0 turns it off


def test_freeze_then_unfreeze_opens_the_backbone_after_the_epoch(compose_cfg):
    model, trainee = _model_and_trainee(compose_cfg, ["model.finetune=freeze_then_unfreeze",
                                                      "model.unfreeze_epoch=1"], steps_per_epoch=2)
    first = _snapshot(model)
    _step(trainee, 0)
    _step(trainee, 1)  # end of epoch 1: the hook unfreezes
    assert torch.equal(model.state_dict()["backbone.fc1.weight"], first["backbone.fc1.weight"])
    assert all(p.requires_grad for p in model.parameters()) and not model.frozen
    _step(trainee, 2)
    assert not torch.equal(model.state_dict()["backbone.fc1.weight"], first["backbone.fc1.weight"])


def test_layer_decay_and_head_lr_scale(compose_cfg):
    cfg = compose_cfg(TINY_PANNS + ["optimizer.lr=0.01", "optimizer.layer_decay=0.5",
                                    "optimizer.head_lr_scale=10"])
    model = create_model(cfg.model, 3, "none", 64)
    groups = param_groups(cfg.optimizer, model)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["backbone.head.weight"])] == pytest.approx(0.1)
    # CNN6's layers from the input: bn0, conv_block1..4, fc1 (6): fc1 is one step below the head.
    assert lr_of[id(named["backbone.fc1.weight"])] == pytest.approx(0.01 * 0.5)
    assert lr_of[id(named["backbone.conv_block4.conv1.weight"])] == pytest.approx(0.01 * 0.5**2)
    assert lr_of[id(named["backbone.bn0.weight"])] == pytest.approx(0.01 * 0.5**6)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(named["backbone.bn0.weight"]) in no_decay and id(named["backbone.fc1.weight"]) not in no_decay


def test_default_groups_are_plain(compose_cfg):
    """Without transfer knobs every parameter learns at optimizer.lr (as before these knobs existed)."""
    cfg = compose_cfg(["model=baseline_cnn"])
    model = create_model(cfg.model, 5, "dataset", 64)
    groups = param_groups(cfg.optimizer, model)
    assert {g["lr"] for g in groups} == {cfg.optimizer.lr} and len(groups) == 2


def test_front_end_mismatch_with_weights_is_refused_naming_the_keys(compose_cfg):
    validate(compose_cfg(["model=panns_cnn14", "features.sample_rate=16000", "features.f_max=8000"]))  # no weights
    cfg = compose_cfg(["model=panns_cnn14", "model.weights=panns:cnn14", "features.sample_rate=16000",
                       "features.n_mels=128", "features.f_max=8000"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    line = [p for p in str(err.value).splitlines() if "model.front_end" in p]
    assert len(line) == 1
    assert "features.sample_rate=16000" in line[0] and "features.n_mels=128" in line[0] and "sample_rate=32000" in line[0]


def test_front_end_mismatch_can_be_a_loud_warning(compose_cfg, caplog):
    cfg = compose_cfg(["model=panns_cnn14", "model.weights=panns:cnn14", "features.n_mels=128",
                       "model.front_end_check=warn"])
    with caplog.at_level(logging.WARNING, logger="esc_sweep"):
        validate(cfg)
    assert any("front end mismatch" in r.message and "features.n_mels=128" in r.message for r in caplog.records)


@pytest.mark.parametrize("override,key", [
    ("model.finetune=half", "model.finetune"),
    ("optimizer.layer_decay=0", "optimizer.layer_decay"),
    ("optimizer.layer_decay=1.5", "optimizer.layer_decay"),
    ("optimizer.head_lr_scale=0", "optimizer.head_lr_scale"),
    ("model.weights_sha256=abc", "model.weights_sha256"),
    ("features.mel_scale=bark", "features.mel_scale"),
])
def test_bad_transfer_values_are_refused(compose_cfg, override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_cfg(["model=panns_cnn6", override]))


def test_unfreeze_epoch_must_fall_inside_training(compose_cfg):
    with pytest.raises(ConfigError, match="model.unfreeze_epoch"):
        validate(compose_cfg(["model=panns_cnn6", "model.finetune=freeze_then_unfreeze", "model.unfreeze_epoch=30",
                              "trainer.epochs=30"]))


def test_picking_a_model_sets_its_front_end(compose_cfg):
    cfg = compose_cfg(["model=efficientat_mn01"])
    assert (cfg.features.sample_rate, cfg.features.n_mels, cfg.features.hop_length) == (32000, 128, 320)
    assert compose_cfg(["model=ast"]).features.sample_rate == 16000
    assert compose_cfg(["model=panns_cnn14", "features.n_mels=128"]).features.n_mels == 128  # overridable


def test_bundle_config_rebuilds_without_fetching_weights(compose_cfg, tmp_path):
    from omegaconf import OmegaConf
    from transformers import ASTConfig, ASTForAudioClassification

    folder = tmp_path / "ast"
    ASTForAudioClassification(ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                                        intermediate_size=16, num_mel_bins=32, max_length=64)).save_pretrained(folder)
    cfg = compose_cfg(["model=ast", f"model.weights={folder}", "model.front_end.n_mels=32"])
    config = OmegaConf.to_container(cfg, resolve=True)
    record = front_end_record(config)
    assert record["weights"] == str(folder) and record["features"]["n_mels"] == 32
    portable = portable_model_config(config["model"])
    assert portable["weights"] is None and portable["kwargs"]["hf_config"]["max_length"] == 64
    rebuilt = compose_cfg(["model=ast", "model.front_end.n_mels=32"])
    rebuilt.model.kwargs = portable["kwargs"]
    model = create_model(rebuilt.model, 4, "none", 32)
    assert model.backbone.max_length == 64 and model.backbone.get_classifier().out_features == 4


def test_transfer_search_composes_into_an_optuna_space():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    from esc_sweep.paths import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR)):
        cfg = compose("config", overrides=["hparams_search=transfer"], return_hydra_config=True)
    validate(cfg)
    assert cfg.model.name == "panns_cnn14" and cfg.model.weights == "panns:cnn14"
    assert cfg.features.sample_rate == 32000  # the backbone's front end came with it
    sweeper = cfg.hydra.sweeper
    distributions, fixed, _ = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed and set(distributions["model.finetune"].choices) == {"full", "linear_probe",
                                                                          "freeze_then_unfreeze"}
    assert distributions["optimizer.lr"].log and "optimizer.layer_decay" in distributions
