"""Refuse ``_target_`` values that would import arbitrary code.

esc_sweep builds its objects from names, not ``_target_``; a config or a
command-line override that smuggles one in may only name this package's own
classes or the libraries it expects.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from esc_sweep.errors import ConfigError

ALLOWED_TARGET_PREFIXES = ("esc_sweep.", "torch.optim.", "timm.")


def _walk(node: Any, path: str):
    if isinstance(node, dict):
        for key, value in node.items():
            child_path = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield child_path, value
            else:
                yield from _walk(value, child_path)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}[{i}]")


def check_targets(cfg: DictConfig) -> None:
    """Raise ConfigError for any ``_target_`` outside the allowed modules (hydra's own excluded)."""
    for path, value in _walk(OmegaConf.to_container(cfg, resolve=False), ""):
        if path.startswith("hydra."):
            continue
        if not isinstance(value, str) or not value.startswith(ALLOWED_TARGET_PREFIXES):
            raise ConfigError(
                f"{path}={value!r}: refused. _target_ may only name classes from "
                f"{', '.join(p.rstrip('.') for p in ALLOWED_TARGET_PREFIXES)}."
            )


def is_allowed_target(value: str) -> bool:
    return isinstance(value, str) and value.startswith(ALLOWED_TARGET_PREFIXES)

