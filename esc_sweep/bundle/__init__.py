"""A trained model on disk (format: a bundle folder) and in memory (predictor: ``Bundle``).

``from esc_sweep.bundle import load_bundle`` is the public entry point. Loading
a bundle needs neither the trainer, nor MLflow (except for an MLflow run id),
nor matplotlib.
"""

from esc_sweep.bundle.format import BUNDLE_DIR, bundle_directory, read_init_weights, save_bundle  # noqa: F401
from esc_sweep.bundle.predictor import Bundle, load_bundle  # noqa: F401
from esc_sweep.errors import BundleError  # noqa: F401
