"""A bundle carries the front end the model learnt (PCEN, LEAF) and predicts the same after reloading."""

from __future__ import annotations

import pytest
import torch

from esc_sweep.bundle import load_bundle, save_bundle
from esc_sweep.features.transforms import build_features
from esc_sweep.models import create_model
from tests.conftest import FAST_SYNTHETIC, compose_config

CLASSES = ["a", "b", "c"]


def trained_a_little(cfg) -> torch.nn.Module:
    """A model whose front-end parameters moved away from their initial values (a few Adam steps)."""
    torch.manual_seed(0)
    extractor = build_features(cfg.features)
    stored = extractor(0.1 * torch.randn(1, int(cfg.dataset.clip_seconds * cfg.features.sample_rate))).shape[2]
    model = create_model(cfg.model, len(CLASSES), cfg.features.normalize, stored, cfg.features.kind, cfg.features)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    waves = 0.1 * torch.randn(6, int(cfg.dataset.clip_seconds * cfg.features.sample_rate))
    targets = torch.arange(6) % 3
    model.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(extractor(waves)), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("overrides, learnt", [
    (["features=pcen", "features.pcen_trainable=true", "features.n_mels=32", "features.n_fft=256"],
     "front_end.pcen.log_alpha"),
    (["features=leaf", "features.n_mels=16"], "front_end.filters.eta"),
])
def test_a_bundle_with_a_trained_front_end_predicts_the_same_after_reload(overrides, learnt, tmp_path):
    cfg = compose_config(FAST_SYNTHETIC + overrides)
    model = trained_a_little(cfg)
    initial = create_model(cfg.model, len(CLASSES), cfg.features.normalize, 1, cfg.features.kind, cfg.features)
    assert not torch.allclose(model.state_dict()[learnt], initial.state_dict()[learnt])  # it did learn
    path = save_bundle(tmp_path / "bundle", model, cfg, CLASSES)
    bundle = load_bundle(path)
    assert torch.equal(bundle.model.state_dict()[learnt], model.state_dict()[learnt])
    torch.manual_seed(1)
    waveforms = 0.1 * torch.randn(4, bundle.clip_samples)
    with torch.inference_mode():
        expected = torch.softmax(model(build_features(cfg.features)(waveforms)), dim=1)
    assert torch.allclose(bundle.predict(waveforms).float(), expected, atol=1e-5)
