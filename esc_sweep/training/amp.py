"""Mixed precision: the one autocast context every forward pass (training, evaluation, crops) runs in."""

from __future__ import annotations

import contextlib

import torch
from omegaconf import DictConfig


def autocast(cfg: DictConfig, device: torch.device):
    """bfloat16 autocast with ``trainer.amp`` on a CUDA device; elsewhere a context that does nothing."""
    if cfg.trainer.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
