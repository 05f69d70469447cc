"""Models: spectrogram [B, 1, bins, frames] -> logits.

- ``create_model(cfg, num_classes, normalize, num_bins, features_kind=None)`` (``factory.py``):
  ``model.*`` -> a ``Classifier`` (``classifier.py``: standardisation, then the backbone).
- ``registry.py``: ``register_model``, ``list_models``, ``get_pretrained_cfg``, as timm's; it knows
  no model by name.
- One module per family, each registering its models beside the class, with the front end its
  weights expect and its checkpoint converter: ``baseline.py`` (``baseline_cnn``), ``panns.py``
  (``panns_cnn6/10/14``), ``mobilenet.py`` (``efficientat_mn01 ... mn10``), ``hf.py`` (``hf``: a
  transformers spectrogram classifier such as AST). Any other ``model.name`` is a timm model.
- ``weights.py`` finds and loads ``model.weights``; ``init_from.py`` copies a trained model's
  weights (``model.init_from``); ``record.py`` is what a bundle records about its model.

Adding a model: one module here that defines it and registers it (``@register_model("name")``; it is
imported below with the others), and ``conf/model/<name>.yaml``.
"""

from __future__ import annotations

import importlib
import pkgutil

from esc_sweep.models.classifier import RECALIBRATION_BATCHES, Classifier, Standardize, count_parameters
from esc_sweep.models.factory import create_backbone, create_model
from esc_sweep.models.hf import checkpoint_front_end_mismatches
from esc_sweep.models.record import FRONT_END_KEYS, front_end_record, portable_model_config
from esc_sweep.models.registry import PretrainedCfg, get_pretrained_cfg, is_model, list_models, register_model

# Every module of this package is imported, so a family's module registers its models by being here.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "RECALIBRATION_BATCHES", "Classifier", "FRONT_END_KEYS", "PretrainedCfg", "Standardize",
    "checkpoint_front_end_mismatches", "count_parameters", "create_backbone", "create_model", "front_end_record",
    "get_pretrained_cfg", "is_model", "list_models", "portable_model_config", "register_model",
]
