"""Start a new model from another model's weights (``model.init_from``), except its classifier head.

Takes a state dict: where it comes from (a bundle folder, an MLflow run) is the
caller's business (``esc_sweep.bundle.read_init_weights``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from esc_sweep.errors import BundleError

log = logging.getLogger("esc_sweep")


def classifier_head_names(model: nn.Module) -> set[str]:
    """state_dict keys of the classifier head: timm's ``get_classifier()``, else the last Linear."""
    backbone = getattr(model, "backbone", model)
    head = backbone.get_classifier() if hasattr(backbone, "get_classifier") else None
    if head is None or not list(head.parameters()):
        linears = [m for m in backbone.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None:
        return set()
    for prefix, module in model.named_modules():
        if module is head:
            return {f"{prefix}.{name}" for name in head.state_dict()}
    return set()


def load_backbone_weights(
    model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "", source_model: str = "?",
    source_width: Any = None,
) -> dict[str, list[str]]:
    """Copy ``state`` into ``model`` except the classifier head.

    Weights are matched by name and shape; the head keeps its fresh
    initialisation (sized for the new classes). Returns the names that were
    ``loaded``, left as the ``head`` and ``skipped`` (no match in ``state``).
    Raises BundleError when no backbone weight matches (another architecture).
    """
    head = classifier_head_names(model)
    target = model.state_dict()
    loaded, skipped = [], []
    for name, tensor in target.items():
        if name in head:
            continue
        incoming = state.get(name)
        if incoming is not None and incoming.shape == tensor.shape:
            target[name] = incoming.to(dtype=tensor.dtype)
            loaded.append(name)
        else:
            skipped.append(name)
    # Batch-norm step counters are scalars that match any architecture: they prove nothing.
    backbone_loaded = [n for n in loaded if not n.startswith("standardize.") and not n.endswith("num_batches_tracked")]
    if not backbone_loaded:
        raise BundleError(
            f"model.init_from={source}: none of its weights fit this model (bundle model {source_model!r}, "
            f"width {source_width}): use the same model.name and model.width as the bundle"
        )
    model.load_state_dict(target)
    if skipped:
        log.warning(
            "model.init_from: %d weights have no match in the bundle and keep their fresh values: %s%s",
            len(skipped), ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "",
        )
    log.info(
        "model.init_from: loaded %d weights from %s (%s); new head for %s",
        len(loaded), source, source_model, ", ".join(sorted(head)) or "-",
    )
    return {"loaded": loaded, "head": sorted(head), "skipped": skipped}
