"""EnvNet-v2 (model=envnet_v2): the paper's shapes and its windowing of whole clips."""

from __future__ import annotations

import pytest
import torch

from esc_sweep.config import validate
from esc_sweep.errors import ConfigError
from esc_sweep.models import create_model
from esc_sweep.models.envnet import EnvNetV2
from tests.conftest import compose_config

SHORT = 24014  # the paper's 16 kHz window (1.5 s): a cheaper model for these tests


def test_the_papers_window_gives_the_papers_first_fully_connected_layer():
    model = EnvNetV2(50)  # 66 650 samples at 44.1 kHz
    assert model.head[0].in_features == 256 * 10 * 8  # the authors' fc11 input
    assert 100e6 < sum(p.numel() for p in model.parameters()) < 102e6


def test_training_takes_one_random_window_and_evaluation_averages_evenly_spaced_ones():
    torch.manual_seed(0)
    model = EnvNetV2(4, input_length=SHORT, eval_crops=3)
    clip = torch.randn(2, 1, 1, 40000)
    model.train()
    views, crops = model.windows(clip)
    assert crops == 1 and views.shape == (2, 1, 1, SHORT)
    model.eval()
    views, crops = model.windows(clip)
    assert crops == 3 and views.shape == (6, 1, 1, SHORT)
    padded = torch.nn.functional.pad(clip, (SHORT // 2, SHORT // 2))
    last = padded.shape[-1] - SHORT
    assert torch.equal(views[0], padded[0, :, :, :SHORT]) and torch.equal(views[2], padded[0, :, :, last:])
    with torch.no_grad():
        out = model(clip)
        per_crop = torch.softmax(model.head(model._trunk(views)), dim=1).reshape(2, 3, -1).mean(1)
        assert torch.allclose(out, per_crop.log(), atol=1e-5)
        window = clip[..., :SHORT]
        assert torch.allclose(model(window), model.head(model._trunk(window)))  # exactly one window: plain logits


def test_envnet_goes_with_the_waveform_front_end_only():
    cfg = compose_config(["model=envnet_v2"])
    assert cfg.features.kind == "waveform" and cfg.features.sample_rate == 44100
    validate(cfg)
    model = create_model(cfg.model, 5, cfg.features.normalize, 1, cfg.features.kind, cfg.features)
    assert isinstance(model.backbone, EnvNetV2)
    with pytest.raises(ConfigError, match="features.kind=mel must be waveform"):
        validate(compose_config(["model=envnet_v2", "features.kind=mel"]))
    with pytest.raises(ConfigError, match="features.kind=waveform: model.name=baseline_cnn takes a spectrogram"):
        validate(compose_config(["features.kind=waveform"]))
