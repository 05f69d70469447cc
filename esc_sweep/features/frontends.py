"""What each ``features.kind`` splits between the feature store and the model.

Fixed front ends (mel, mfcc, stft, fbank, efficientat) are computed once into the store
(``transforms.build_features``) and the model gets decibel spectrograms. Three kinds put part of the
front end inside the model (``Classifier.front_end``), so it is trained with the model (when it has
parameters) and saved in its state, hence in the bundle:

* ``pcen``: the store keeps the decibel mel spectrogram (the decibel augmentations apply as for
  ``mel``); the model turns it back into energies and applies PCEN (``features.pcen_trainable``:
  learnt alpha, delta, r).
* ``leaf``: the store keeps the waveform [B, 1, 1, T]; the model runs LEAF (Gabor filters, Gaussian
  pooling, sPCEN, all learnt) and the classifier behind it sees [B, 1, n_mels, frames].
* ``waveform``: the store keeps the waveform [B, 1, 1, T] and the model (EnvNet-v2) takes it as is.

Waveform kinds use the waveform augmentations (``augment.Augment``'s ``domain="waveform"``: gain as a
factor, crop and shift in samples).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from esc_sweep.features.leaf import Leaf
from esc_sweep.features.pcen import PCEN, PCENFromDecibels, smoothing_coefficient

WAVEFORM_KINDS = ("leaf", "waveform")  # the store holds waveforms [B, 1, 1, T]
LEARNT_KINDS = ("pcen", "leaf")  # the model holds (part of) the front end


def build_model_front_end(cfg: Any) -> nn.Module:
    """The part of the front end the model holds for ``features.*`` ``cfg``; identity for the fixed kinds."""
    if cfg.kind == "pcen":
        s = smoothing_coefficient(cfg.pcen_time_constant, cfg.sample_rate / cfg.hop_length)
        return PCENFromDecibels(PCEN(cfg.n_mels, s=s, alpha=cfg.pcen_alpha, delta=cfg.pcen_delta, r=cfg.pcen_r,
                                     eps=cfg.pcen_eps, trainable=bool(cfg.pcen_trainable)))
    if cfg.kind == "leaf":
        return Leaf.from_features(cfg)
    return nn.Identity()


def model_input_bins(cfg: Any, stored_bins: int) -> int:
    """Frequency bins the model's standardisation and backbone see, given the store's bins."""
    return cfg.n_mels if cfg.kind == "leaf" else stored_bins


def frames_per_second(cfg: Any) -> float:
    """Steps per second along the last axis of what the store holds: samples for waveform kinds."""
    waveform = getattr(cfg, "kind", "mel") in WAVEFORM_KINDS  # a partial features section: a spectrogram kind
    return float(cfg.sample_rate) if waveform else cfg.sample_rate / cfg.hop_length


def augment_domain(cfg: Any) -> str:
    """``waveform`` or ``db``: which augmentations apply to what the store holds."""
    return "waveform" if getattr(cfg, "kind", "mel") in WAVEFORM_KINDS else "db"
