"""Fold-ensemble bundles and test-time crops in a loaded bundle: saved, found, averaged as documented."""

from __future__ import annotations

import json

import pytest
import torch

from esc_sweep.bundle import load_bundle, read_init_weights, save_bundle
from esc_sweep.bundle.ensemble import FoldEnsemble, FoldModels
from esc_sweep.bundle.format import ENSEMBLE_VERSION, save_ensemble_bundle
from esc_sweep.errors import BundleError
from esc_sweep.models import Classifier, create_model
from esc_sweep.training.tta import averaged_log_probabilities
from tests.conftest import FAST_SYNTHETIC, compose_config

CLASSES = ["a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def cfg():
    return compose_config(FAST_SYNTHETIC)


def random_model(cfg, seed: int) -> Classifier:
    torch.manual_seed(seed)
    model = create_model(cfg.model, len(CLASSES), cfg.features.normalize, cfg.features.n_mels)
    model.standardize.fit(torch.randn(8, 1, cfg.features.n_mels, 20) * 10 - 30)
    return model.eval()


@pytest.fixture(scope="module")
def ensemble_dir(cfg, tmp_path_factory):
    states = {fold: random_model(cfg, seed=fold).state_dict() for fold in (1, 2, 3)}
    return save_ensemble_bundle(tmp_path_factory.mktemp("ens") / "bundle_ensemble", states, cfg, CLASSES)


def test_fold_ensemble_predicts_the_mean_of_its_members_probabilities(cfg, ensemble_dir):
    bundle = load_bundle(ensemble_dir)
    assert isinstance(bundle.model, FoldEnsemble) and bundle.num_members == 3
    assert "fold ensemble of 3" in bundle.describe()
    torch.manual_seed(0)
    waveforms = 0.1 * torch.randn(4, bundle.clip_samples)
    spectrograms = bundle.spectrogram(waveforms)
    with torch.inference_mode():
        members = torch.stack([torch.softmax(random_model(cfg, seed=f)(spectrograms), dim=1) for f in (1, 2, 3)])
    probabilities = bundle.predict(waveforms)
    assert torch.allclose(probabilities, members.mean(0), atol=1e-5)
    assert not any(torch.allclose(probabilities, m, atol=1e-3) for m in members)  # really a mix of three


def test_ensemble_bundle_records_its_members_and_what_they_trained_on(ensemble_dir):
    meta = json.loads((ensemble_dir / "bundle.json").read_text())
    assert meta["version"] == ENSEMBLE_VERSION
    assert [m["fold"] for m in meta["members"]] == [1, 2, 3]
    assert meta["members"][0] == {"fold": 1, "weights": "members/fold1.pt", "trained_on_folds": [2, 3, 4, 5]}
    assert sorted(p.name for p in (ensemble_dir / "members").iterdir()) == ["fold1.pt", "fold2.pt", "fold3.pt"]
    assert not list(ensemble_dir.rglob("*.partial"))  # atomic writes leave nothing behind


def test_single_model_bundles_load_as_before(cfg, tmp_path):
    path = save_bundle(tmp_path / "bundle", random_model(cfg, seed=7), cfg, CLASSES)
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["version"] == 1 and "members" not in meta
    bundle = load_bundle(path)
    assert isinstance(bundle.model, Classifier) and bundle.num_members == 1
    assert read_init_weights(path).model_name == cfg.model.name


def test_broken_or_newer_ensembles_are_refused_clearly(ensemble_dir, tmp_path):
    import shutil

    broken = shutil.copytree(ensemble_dir, tmp_path / "broken")
    (broken / "members" / "fold2.pt").unlink()
    with pytest.raises(BundleError, match="fold2.pt"):
        load_bundle(broken)
    newer = shutil.copytree(ensemble_dir, tmp_path / "newer")
    meta = json.loads((newer / "bundle.json").read_text())
    (newer / "bundle.json").write_text(json.dumps({**meta, "version": ENSEMBLE_VERSION + 1}))
    with pytest.raises(BundleError, match="upgrade esc_sweep"):
        load_bundle(newer)
    with pytest.raises(BundleError, match="single-model bundle"):
        read_init_weights(ensemble_dir)


def test_bundle_test_time_crops_default_to_the_trained_setting(cfg, tmp_path):
    from omegaconf import OmegaConf

    trained = OmegaConf.merge(cfg, {"trainer": {"tta_crops": 4}})
    path = save_bundle(tmp_path / "bundle", random_model(cfg, seed=3), trained, CLASSES)
    assert load_bundle(path).tta_crops == 4
    plain = load_bundle(path, tta_crops=0)
    cropped = load_bundle(path, tta_crops=5)
    assert "5-crop" in cropped.describe() and "crop" not in plain.describe()
    torch.manual_seed(1)
    waveforms = 0.1 * torch.randn(3, plain.clip_samples)
    spectrograms = plain.spectrogram(waveforms)
    with torch.inference_mode():
        single = torch.softmax(plain.model(spectrograms), dim=1)
        expected = averaged_log_probabilities(plain.model, spectrograms, 5, cropped.tta_crop_frames(spectrograms.shape[-1])).exp()
    assert cropped.tta_crop_frames(spectrograms.shape[-1]) == round(0.8 * spectrograms.shape[-1])
    assert torch.allclose(plain.predict(waveforms), single, atol=1e-5)
    assert torch.allclose(cropped.predict(waveforms), expected, atol=1e-5)
    assert not torch.allclose(cropped.predict(waveforms), single, atol=1e-4)
    with pytest.raises(BundleError, match=">= 0"):
        load_bundle(path, tta_crops=-1)


def test_fold_models_keeps_cpu_copies_of_fold_models_only(cfg):
    keeper = FoldModels()
    model = random_model(cfg, seed=5)
    keeper.on_model_trained(0, model)  # the final fit
    keeper.on_model_trained(2, model)
    assert list(keeper.states) == [2]
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # training on would not change the kept copy
    assert not torch.equal(keeper.states[2][next(iter(dict(model.named_parameters())))], next(model.parameters()))
    keeper.on_fold_end(type("R", (), {"fold": 3})(), resumed=True)
    keeper.on_fold_end(type("R", (), {"fold": 2})(), resumed=False)
    assert keeper.missing == [3]


@pytest.mark.parametrize("short_clips", ["pad", "repeat"])
def test_a_short_recording_is_filled_as_the_bundle_was_trained(cfg, tmp_path, short_clips):
    """dataset.short_clips travels in the bundle: predict, the file path (predict_windows) and the
    tagging app fill a recording shorter than a window the way training and evaluation did."""
    from omegaconf import OmegaConf

    from esc_sweep.app.tagging import tag_file
    from esc_sweep.bundle.predictor import repeat_to

    trained = OmegaConf.merge(cfg, {"dataset": {"variable_length": True, "short_clips": short_clips}})
    bundle = load_bundle(save_bundle(tmp_path / "bundle", random_model(cfg, seed=5), trained, CLASSES))
    assert bundle.repeats_short_clips == (short_clips == "repeat")
    torch.manual_seed(2)
    short = 0.1 * torch.randn(1, bundle.clip_samples // 3 + 7)
    filled = (repeat_to(short, bundle.clip_samples) if short_clips == "repeat"
              else torch.nn.functional.pad(short, (0, bundle.clip_samples - short.shape[1])))
    expected = bundle.predict(filled)
    assert torch.allclose(bundle.predict(short), expected, atol=1e-5)
    windows = [torch.nn.functional.pad(short[0], (0, bundle.clip_samples - short.shape[1]))]  # as iter_windows
    assert torch.allclose(bundle.predict_windows(windows, total_samples=short.shape[1]), expected[0], atol=1e-5)
    import soundfile as sf

    sf.write(tmp_path / "short.wav", short[0].numpy(), bundle.sample_rate, subtype="FLOAT")
    assert torch.allclose(tag_file(bundle, tmp_path / "short.wav").probabilities, expected[0], atol=1e-4)
    other = "pad" if short_clips == "repeat" else "repeat"  # and the two fillings do differ
    plain = repeat_to(short, bundle.clip_samples) if other == "repeat" else torch.nn.functional.pad(
        short, (0, bundle.clip_samples - short.shape[1]))
    assert not torch.allclose(bundle.predict(plain), expected, atol=1e-4)
