"""Where esc_sweep keeps things: one module for every default location.

Imports nothing heavy (no torch, no MLflow), so any module may use it.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The Hydra config tree ships inside the package (package data), so an installed
# copy composes configs from any folder.
CONFIG_DIR = PACKAGE_DIR / "conf"
