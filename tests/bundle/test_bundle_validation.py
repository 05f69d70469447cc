"""A hand-edited, damaged or truncated bundle.json fails to load in one line naming the field.

Generated mutations of a real bundle.json (fields deleted, values replaced by values of any
JSON type, numbers changed, the text cut at any byte): each either loads into a bundle that
predicts probabilities, or is refused with a BundleError; never another exception.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esc_sweep.bundle import load_bundle, save_bundle
from esc_sweep.errors import BundleError
from esc_sweep.models import create_model
from tests.conftest import FAST_SYNTHETIC, compose_config

CLASSES = ["dog", "rain", "siren"]

# Fields loading relies on, and the word a refusal must name for each.
REQUIRED = ["version", "class_names", "num_bins", "config", "config.model", "config.model.name", "config.features",
            "config.features.sample_rate", "config.features.hop_length", "config.dataset",
            "config.dataset.clip_seconds"]
OPTIONAL = ["cv", "front_end", "front_end.features", "config.trainer", "config.trainer.tta_crops",
            "config.features.n_mels", "config.features.n_fft", "config.features.kind", "config.model.width",
            "config.augmentation", "training", "per_class_accuracy", "mlflow_run_id", "created"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    cfg = compose_config(FAST_SYNTHETIC + ["tracking.enabled=false", "dataset.num_classes=3"])
    torch.manual_seed(0)
    model = create_model(cfg.model, len(CLASSES), cfg.features.normalize, cfg.features.n_mels)
    return save_bundle(tmp_path_factory.mktemp("valid") / "bundle", model, cfg, CLASSES)


def _copy_with(bundle: Path, tmp: Path, text: str) -> Path:
    target = tmp / "bundle"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(bundle, target)
    (target / "bundle.json").write_text(text)
    return target


def _set(meta: dict, dotted: str, value=None, delete: bool = False) -> bool:
    *parents, leaf = dotted.split(".")
    node = meta
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    if not isinstance(node, dict):
        return False
    if delete:
        return node.pop(leaf, None) is not None or leaf in node
    node[leaf] = value
    return True


def _loads_or_refuses(folder: Path) -> BundleError | None:
    """None when it loads and predicts probabilities; the BundleError when refused (one line)."""
    try:
        loaded = load_bundle(folder)
    except BundleError as err:
        assert "\n" not in str(err), str(err)
        return err
    probabilities = loaded.predict(torch.zeros(loaded.clip_samples))
    assert probabilities.shape == (1, loaded.num_classes) and torch.isfinite(probabilities).all()
    assert abs(float(probabilities.sum()) - 1) < 1e-4
    return None


def test_the_valid_bundle_loads(bundle):
    assert _loads_or_refuses(bundle) is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(REQUIRED))
def test_a_missing_required_field_is_named(bundle, tmp_path, field):
    meta = json.loads((bundle / "bundle.json").read_text())
    _set(meta, field, delete=True)
    refused = _loads_or_refuses(_copy_with(bundle, tmp_path, json.dumps(meta)))
    assert refused is not None, f"loaded without {field}"
    assert f"field '{field}' is missing" in str(refused), str(refused)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(REQUIRED + OPTIONAL), value=json_values)
def test_any_value_in_any_field_loads_a_working_bundle_or_is_refused_naming_the_field(bundle, tmp_path, field,
                                                                                        value):
    meta = json.loads((bundle / "bundle.json").read_text())
    original = json.loads(json.dumps(meta))
    _set(meta, field, value)
    refused = _loads_or_refuses(_copy_with(bundle, tmp_path, json.dumps(meta)))
    if refused is not None:
        top = field.split(".")[0]
        assert top in str(refused) or field.rsplit(".", 1)[-1] in str(refused), (field, value, str(refused))
    elif field in REQUIRED and value != _lookup(original, field):
        # A required field replaced by another value loaded: only an equivalent value may.
        assert field in ("config.model", "config.features", "config.dataset", "config") or \
            type(value) is type(_lookup(original, field)), (field, value)


def _lookup(meta: dict, dotted: str):
    node = meta
    for part in dotted.split("."):
        node = node[part]
    return node


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.999))
def test_a_truncated_bundle_json_is_called_damaged(bundle, tmp_path, cut):
    text = (bundle / "bundle.json").read_text()
    refused = _loads_or_refuses(_copy_with(bundle, tmp_path, text[: int(len(text) * cut)]))
    assert refused is not None
    assert "damaged" in str(refused) or "not an esc_sweep bundle" in str(refused), str(refused)


@pytest.mark.parametrize("field, value, named", [
    ("num_bins", 64, "field 'num_bins' is 64 but config.features gives 32"),
    ("class_names", ["dog", "rain"], "field 'class_names' lists 2 classes but the weights' classifier has 3"),
    ("config.features.sample_rate", 22050, "field 'config.features.sample_rate' is 22050 but the model was "
                                           "trained with 16000"),
    ("config.features.n_mels", 64, "field 'config.features.n_mels' is 64 but the model was trained with 32"),
])
def test_fields_that_disagree_with_the_weights_or_the_front_end_are_named(bundle, tmp_path, field, value, named):
    meta = json.loads((bundle / "bundle.json").read_text())
    _set(meta, field, value)
    refused = _loads_or_refuses(_copy_with(bundle, tmp_path, json.dumps(meta)))
    assert refused is not None and named in str(refused), str(refused)


def test_damaged_weights_are_called_damaged_without_torchs_weights_only_advice(bundle, tmp_path):
    folder = _copy_with(bundle, tmp_path, (bundle / "bundle.json").read_text())
    weights = folder / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BundleError) as refused:
        load_bundle(folder)
    assert f"weights file {weights} is damaged" in str(refused.value)
    assert "weights_only" not in str(refused.value)


def test_a_damaged_metrics_json_costs_only_the_metrics(bundle, tmp_path):
    folder = _copy_with(bundle, tmp_path, (bundle / "bundle.json").read_text())
    (folder / "metrics.json").write_text('{"folds": [')
    assert load_bundle(folder).metrics is None


def test_a_full_disk_while_saving_a_bundle_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno

    from esc_sweep.bundle import format as bundle_format

    class Full:
        def __init__(self, path, mode):
            self.handle = open(path, mode)

        def write(self, data):
            self.handle.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    cfg = compose_config(FAST_SYNTHETIC + ["tracking.enabled=false", "dataset.num_classes=3"])
    model = create_model(cfg.model, len(CLASSES), cfg.features.normalize, cfg.features.n_mels)
    monkeypatch.setattr(bundle_format, "open", Full, raising=False)
    with pytest.raises(BundleError) as refused:
        save_bundle(tmp_path / "bundle", model, cfg, CLASSES)
    assert str(refused.value).startswith(f"cannot save the bundle in {tmp_path / 'bundle'}: the disk is full")
    assert [p.name for p in (tmp_path / "bundle").iterdir()] == []  # no partial weights, no bundle.json
