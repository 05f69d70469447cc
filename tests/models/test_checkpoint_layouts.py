"""Published checkpoint layouts load through ``model.weights=<file>``, reading only their tensors.

PANNs' training script (audioset_tagging_cnn/pytorch/main.py) saves
``{"iteration": ..., "model": state_dict, "sampler": sampler.state_dict()}``, where the sampler
state holds numpy arrays (``np.where`` index arrays per class) and Python lists; EfficientAT's
releases are a bare state dict. Files written under numpy 1 name ``numpy.core.multiarray``, under
numpy 2 ``numpy._core.multiarray``: both must load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from esc_sweep.errors import ConfigError
from esc_sweep.models import create_model, mobilenet
from esc_sweep.models.weights import read_checkpoint
from tests.models.reference import panns_reference_models


def _sampler_state(classes: int = 527) -> dict:
    """What PANNs' BalancedSampler.state_dict() returns: numpy index arrays, a queue, pointers."""
    targets = np.random.RandomState(0).rand(200, classes) > 0.98
    return {"indexes_per_class": [np.where(targets[:, k])[0] for k in range(classes)],
            "queue": np.arange(classes).tolist(), "pointers_of_classes": [0] * classes}


def _as_numpy1_file(path: Path) -> Path:
    """The same checkpoint as numpy 1 pickles it (``numpy.core.multiarray`` instead of ``numpy._core``)."""
    old = path.with_name(path.stem + "_numpy1.pth")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(old, "w", zipfile.ZIP_STORED) as copy:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            copy.writestr(info, data)
    assert b"numpy.core.multiarray" in zipfile.ZipFile(old).read(next(n for n in zipfile.ZipFile(old).namelist()
                                                                       if n.endswith("data.pkl")))
    return old


@pytest.fixture(scope="module")
def panns_training_checkpoint(tmp_path_factory):
    """A Cnn14 checkpoint in the layout of PANNs' training script: random weights plus numpy sampler state."""
    torch.manual_seed(0)
    reference = panns_reference_models().Cnn14(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64,
                                               fmin=50, fmax=14000, classes_num=527)
    path = tmp_path_factory.mktemp("panns") / "Cnn14_mAP_0.431.pth"
    torch.save({"iteration": 540000, "model": reference.state_dict(), "sampler": _sampler_state()}, path)
    return path, reference.state_dict()


def test_plain_weights_only_load_refuses_the_panns_layout(panns_training_checkpoint):
    """The problem this solves: torch's default safe loading refuses the sampler's numpy arrays."""
    path, _ = panns_training_checkpoint
    with pytest.raises(Exception, match="numpy"):
        torch.load(path, weights_only=True)


@pytest.mark.parametrize("numpy_version", ["numpy2", "numpy1"])
def test_panns_training_checkpoint_loads_through_model_weights(numpy_version, panns_training_checkpoint,
                                                               compose_cfg, caplog):
    path, original = panns_training_checkpoint
    if numpy_version == "numpy1":
        path = _as_numpy1_file(path)
    cfg = compose_cfg(["model=panns_cnn14", f"model.weights={path}"])
    with caplog.at_level(logging.INFO, logger="esc_sweep"):
        model = create_model(cfg.model, 5, cfg.features.normalize, cfg.features.n_mels)
    state = model.backbone.state_dict()
    loaded = [k for k in original if not k.startswith(("spectrogram_extractor", "logmel_extractor", "fc_audioset"))]
    assert set(loaded) == set(state) - {"head.weight", "head.bias"}  # every trunk tensor, 79 for CNN14
    for key in loaded:
        assert torch.equal(state[key], original[key]), key
    assert model.backbone.head.weight.shape == (5, 2048)
    message = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("model.weights: loaded"))
    assert "of PANNs CNN14" in message and "the classifier head (head) starts fresh" in message
    assert "head head" not in message


def test_only_the_tensors_are_read(panns_training_checkpoint):
    path, original = panns_training_checkpoint
    state = read_checkpoint(path)
    assert set(state) == set(original)  # no iteration, no sampler
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_efficientat_release_layout_loads(compose_cfg, tmp_path):
    """EfficientAT's releases: a bare state dict of the full AudioSet model (527 classes)."""
    original = mobilenet.MobileNetAudio(527, width_mult=0.1).state_dict()
    path = tmp_path / "mn01_as_mAP_298.pt"
    torch.save(original, path)
    cfg = compose_cfg(["model=efficientat_mn01", f"model.weights={path}"])
    model = create_model(cfg.model, 5, cfg.features.normalize, cfg.features.n_mels)
    state = model.backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in original.items() if not k.startswith("classifier.5."))


def test_a_file_with_other_python_objects_is_refused_in_one_line(compose_cfg, tmp_path):
    """Objects other than tensors and numpy data are never unpickled; the line names them and the fix."""
    path = tmp_path / "with_args.pth"
    torch.save({"model": {"bn0.weight": torch.ones(64)}, "args": argparse.Namespace(lr=1e-3)}, path)
    cfg = compose_cfg(["model=panns_cnn14", f"model.weights={path}"])
    with pytest.raises(ConfigError, match=r"argparse\.Namespace.*weights_only=False\)\['model'\]") as err:
        create_model(cfg.model, 5, cfg.features.normalize, cfg.features.n_mels)
    assert "\n" not in str(err.value)


def test_a_checkpoint_of_another_family_is_named_so_in_one_line(compose_cfg, tmp_path):
    path = tmp_path / "mn01.pt"
    torch.save(mobilenet.MobileNetAudio(527, width_mult=0.1).state_dict(), path)
    cfg = compose_cfg(["model=panns_cnn6", f"model.weights={path}"])
    with pytest.raises(ConfigError, match=r"not a PANNs CNN6 checkpoint: none of its \d+ tensors") as err:
        create_model(cfg.model, 5, cfg.features.normalize, cfg.features.n_mels)
    assert "\n" not in str(err.value)
    # The other way round, and a width that does not fit, name the family too.
    cfg = compose_cfg(["model=efficientat_mn05", f"model.weights={path}"])
    with pytest.raises(ConfigError, match=r"does not fit this model, EfficientAT mn05 .*differ in shape"):
        create_model(cfg.model, 5, cfg.features.normalize, cfg.features.n_mels)


def test_a_file_without_tensors_is_refused(tmp_path):
    path = tmp_path / "sampler_only.pth"
    torch.save({"iteration": 3, "sampler": _sampler_state(4)}, path)
    with pytest.raises(ConfigError, match=r"holds no state dict of tensors \(found a dict of iteration, sampler\)"):
        read_checkpoint(path)
