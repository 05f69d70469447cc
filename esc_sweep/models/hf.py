"""Hugging Face ``transformers`` audio classifiers on esc_sweep's spectrograms (AST and its kin).

``model.name=hf`` with ``model.weights=<hub id | save_pretrained folder>`` loads
any audio-classification model whose input is a frame-by-mel log filter bank,
as the Audio Spectrogram Transformer's (``ASTFeatureExtractor``) is; a new
classification layer is sized for the classes (the rest of the weights load).
Without weights, ``model.kwargs.hf_config`` (a dict of ``ASTConfig`` fields, or
with ``model_type`` of another such model) builds a randomly initialised one.

Models that read raw waveforms (wav2vec2, HuBERT, ...) do not fit esc_sweep's
spectrogram pipeline and are refused with a one-line error.

The input is esc_sweep's ``features.kind=fbank`` spectrogram [B, 1, mels, frames]:
the Kaldi filter bank that ``ASTFeatureExtractor`` computes (natural-log energies).
The input adapter applies the extractor's remaining steps: zero-padded or cut to
``max_length`` frames, then ``(x - mean) / (2 * std)`` with its statistics. The
result equals the extractor's ``input_values`` bit for bit, quiet and silent input included
(tests/models/test_parity.py, tests/models/test_front_end_fixtures.py).

Registered as ``hf`` (``conf/model/ast.yaml``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from esc_sweep.errors import ConfigError, DownloadError
from esc_sweep.models.registry import PretrainedCfg, register_model
from esc_sweep.models.weights import resolve_weights

# ASTFeatureExtractor's settings (transformers) as features.* keys are conf/front_end/ast.yaml: 16 kHz
# Kaldi fbank, 25 ms Hann window, 10 ms hop, 128 bins from 20 Hz, natural log; its AudioSet mean and std:
AST_MEAN, AST_STD = -4.2677393, 4.5689974
# Models whose main input is a [frames, mel bins] filter bank, like AST's.
SPECTROGRAM_MODEL_TYPES = ("audio-spectrogram-transformer",)


class HFAudioClassifier(nn.Module):
    """A transformers audio classifier behind esc_sweep's [B, 1, mels, frames] Kaldi fbank input."""

    def __init__(self, model: nn.Module, mean: float, std: float, max_length: int, sample_rate: int):
        super().__init__()
        self.model = model
        self.mean, self.std, self.max_length = float(mean), float(std), int(max_length)
        # What the checkpoint's feature extractor computes: prepare() takes its Kaldi fbank as is.
        self.expected_front_end = {"kind": "fbank", "sample_rate": int(sample_rate),
                                   "n_mels": int(model.config.num_mel_bins)}

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Kaldi fbank [B, 1, mels, frames] -> the model's ``input_values`` [B, max_length, mels]."""
        x = x.squeeze(1).transpose(1, 2)
        frames = x.shape[1]
        if frames < self.max_length:
            x = F.pad(x, (0, 0, 0, self.max_length - frames))  # the extractor pads with zeros, then normalises
        else:
            x = x[:, : self.max_length]
        return (x - self.mean) / (2 * self.std)

    def get_classifier(self) -> nn.Module:
        linears = [m for m in self.model.classifier.modules() if isinstance(m, nn.Linear)]
        return linears[-1]

    def layer_names(self) -> list[str]:
        """Backbone modules from input to output, for layer-wise lr decay."""
        base = self.model.base_model_prefix  # "audio_spectrogram_transformer"
        trunk = getattr(self.model, base)
        # transformers moved the blocks from ``encoder.layer`` to ``layers`` (5.x): accept both.
        blocks = "encoder.layer" if hasattr(trunk, "encoder") else "layers"
        layers = len(trunk.get_submodule(blocks))
        return ([f"model.{base}.embeddings"] + [f"model.{base}.{blocks}.{i}" for i in range(layers)]
                + [f"model.{base}.layernorm", "model.classifier"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_values=self.prepare(x)).logits


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:240] if text else type(err).__name__


def _extractor_settings(source: Optional[str]) -> dict[str, Any]:
    """mean/std/max_length/sampling_rate of the checkpoint's feature extractor (AST's defaults otherwise)."""
    settings = {"mean": AST_MEAN, "std": AST_STD, "max_length": None, "sample_rate": 16000}
    if source is None:
        return settings
    path = Path(source)
    data: dict[str, Any] = {}
    if path.is_dir():
        file = path / "preprocessor_config.json"
        data = json.loads(file.read_text()) if file.is_file() else {}
    else:
        from transformers import AutoFeatureExtractor  # deferred: optional extra [pretrained] (see build_hf)

        try:
            data = AutoFeatureExtractor.from_pretrained(source).to_dict()
        except Exception:  # the model loaded; a missing extractor leaves AST's defaults
            data = {}
    if data.get("do_normalize") is False:
        settings.update(mean=0.0, std=0.5)  # (x - 0) / (2 * 0.5) = x
    else:
        settings.update(mean=data.get("mean", AST_MEAN), std=data.get("std", AST_STD))
    settings.update(max_length=data.get("max_length"), sample_rate=data.get("sampling_rate", 16000))
    return settings


def architecture_config(source: str) -> dict[str, Any]:
    """``model.kwargs.hf_config`` for a checkpoint: its architecture and extractor settings, no weights."""
    from transformers import AutoConfig  # deferred: optional extra [pretrained] (see build_hf)

    config = AutoConfig.from_pretrained(source).to_dict()
    drop = ("id2label", "label2id", "architectures", "transformers_version", "dtype", "torch_dtype", "num_labels")
    return {**{k: v for k, v in config.items() if k not in drop}, "extractor": _extractor_settings(source)}


def build_hf(cfg: Any, num_classes: int, source: Optional[str]) -> HFAudioClassifier:
    """``source``: a local folder or a hub id (``model.weights``), or None to build from ``model.kwargs.hf_config``."""
    # deferred: transformers is imported here, not at module level: it takes seconds to import, and
    # runs that never pick an HF model should not pay for it at start-up. It is an optional extra [pretrained].
    import transformers  # deferred: see above
    from transformers import AutoConfig, AutoModelForAudioClassification  # deferred: see above

    transformers.logging.set_verbosity_error()  # its "newly initialized" notice is expected: the head is new
    kwargs = dict(cfg.kwargs or {})
    hf_config = dict(kwargs.pop("hf_config", None) or {})
    extractor = hf_config.pop("extractor", None)
    if source is not None:
        try:
            config = AutoConfig.from_pretrained(source)
        except Exception as err:  # offline, unknown id, no config.json: one line for the user
            raise DownloadError(f"model.weights={source}: cannot load a transformers config ({_first_line(err)}); "
                                f"offline, give a local save_pretrained folder") from None
    else:
        model_type = hf_config.pop("model_type", SPECTROGRAM_MODEL_TYPES[0])
        config = AutoConfig.for_model(model_type, **hf_config)
    if config.model_type not in SPECTROGRAM_MODEL_TYPES:
        raise ConfigError(f"model.weights={source}: a {config.model_type!r} model reads raw waveforms or another "
                          f"input; model.name=hf takes spectrogram models ({', '.join(SPECTROGRAM_MODEL_TYPES)})")
    config.num_labels = num_classes
    config.hidden_dropout_prob = float(kwargs.get("hidden_dropout_prob", config.hidden_dropout_prob))
    if source is not None:
        try:
            model = AutoModelForAudioClassification.from_pretrained(source, config=config,
                                                                    ignore_mismatched_sizes=True)
        except Exception as err:
            raise DownloadError(f"model.weights={source}: cannot load the model ({_first_line(err)})") from None
        settings = _extractor_settings(source)
    else:
        model = AutoModelForAudioClassification.from_config(config)
        settings = {**_extractor_settings(None), **(extractor or {})}
    # The position embeddings fix the number of frames: the config's max_length, whatever the extractor says.
    return HFAudioClassifier(model, settings["mean"], settings["std"], config.max_length, settings["sample_rate"])


@register_model("hf", PretrainedCfg(front_end="ast"))
def hf(cfg: Any, num_classes: int, num_bins: int = 128, **kwargs) -> HFAudioClassifier:
    """``model.weights``: a hub id or a local ``save_pretrained`` folder; without, ``model.kwargs.hf_config``."""
    source = None
    if cfg.weights:
        # A local folder is used as is; anything else that is not a file we know is a hub id.
        local = Path(str(cfg.weights)).expanduser()
        source = str(resolve_weights(cfg.weights)) if local.exists() else str(cfg.weights)
    model = build_hf(cfg, num_classes, source)
    if model.model.config.num_mel_bins != num_bins:
        raise ConfigError(f"features.n_mels={num_bins}: model.name=hf ({cfg.weights or 'model.kwargs.hf_config'}) "
                          f"reads {model.model.config.num_mel_bins} mel bins; set features.n_mels to match")
    return model


def checkpoint_front_end_mismatches(model: nn.Module, features: Any) -> dict[str, tuple[Any, Any]]:
    """What a loaded checkpoint's own feature extractor expects (``expected_front_end``) against ``features.*``:
    {key: (have, want)}; empty for models that carry no such record (all but ``hf``).

    ``esc_sweep.config.front_end_mismatches`` checks ``model.front_end`` (the yaml's) before anything loads;
    this checks what the loaded checkpoint itself says.
    """
    expected = getattr(getattr(model, "backbone", model), "expected_front_end", {})
    return {k: (getattr(features, k, None), v) for k, v in expected.items() if getattr(features, k, None) != v}
