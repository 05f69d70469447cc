"""Reference implementations for the parity tests, imported without their side effects.

``import panns_inference`` runs its package ``__init__``, which downloads an
AudioSet labels CSV with wget at import time (and fails offline). Its
``models.py`` needs only torch, torchlibrosa and its sibling
``pytorch_utils.py``: both are loaded here under a stand-in package whose
``__init__`` never runs.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def panns_reference_models():
    """The ``panns_inference.models`` module (Cnn14), without running ``panns_inference/__init__``."""
    spec = importlib.util.find_spec("panns_inference")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("panns-inference is not installed (pip install panns-inference)")
    folder = Path(list(spec.submodule_search_locations)[0])
    name = "_panns_reference"
    if f"{name}.models" in sys.modules:
        return sys.modules[f"{name}.models"]
    package = types.ModuleType(name)
    package.__path__ = [str(folder)]  # relative imports (.pytorch_utils) resolve in the real folder
    sys.modules[name] = package
    module_spec = importlib.util.spec_from_file_location(f"{name}.models", folder / "models.py")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[f"{name}.models"] = module
    module_spec.loader.exec_module(module)
    return module
