"""Conditional search spaces, for ``hydra.sweeper.custom_search_space``.

The plugin's ``params`` syntax describes a flat space. Knobs that only mean
something for some choices (the baseline CNN's width, a timm model's
stochastic depth) are suggested here, after the flat parameters; the
sweeper turns every suggested parameter into a Hydra override.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from esc_sweep.config import WAVEFORM_MODELS

if TYPE_CHECKING:  # Hydra imports this module on every run; optuna only when sweeping
    import optuna


def model_knobs(cfg: DictConfig, trial: optuna.Trial) -> None:
    """Per-family knobs for the ``model`` choice of arch_search / acc_vs_size."""
    family = trial.params.get("model", "baseline_cnn")
    # Values fixed on the command line arrive as user attributes: leave them be.
    fixed = trial.user_attrs
    if family in WAVEFORM_MODELS:
        return  # EnvNet-v2: its own layers and dropout (model.dropout, a flat parameter); no drop path
    if family == "baseline_cnn":
        if "model.width" not in fixed:
            trial.suggest_categorical("model.width", [16, 32, 48, 64])
    else:
        if "model.drop_path" not in fixed:
            trial.suggest_float("model.drop_path", 0.0, 0.3)
        # Depthwise, BatchNorm-heavy mobile nets are sensitive to the batch size.
        if family.startswith(("efficientnet", "mobilenet")) and "trainer.batch_size" not in fixed:
            trial.suggest_categorical("trainer.batch_size", [32, 64])


# Front ends arch_search chooses for spectrogram models; the waveform models (envnet_v2) take the
# waveform, which their yaml sets, so "waveform" is never paired with a spectrogram model nor a
# spectrogram front end with a waveform model: the choice is only suggested where it is valid.
SPECTROGRAM_FRONT_ENDS = ("mel", "pcen", "leaf")


def arch_knobs(cfg: DictConfig, trial: optuna.Trial) -> None:
    """arch_search: ``model_knobs``, plus the front end (``features`` option) for spectrogram models."""
    model_knobs(cfg, trial)
    family = trial.params.get("model", "baseline_cnn")
    if family not in WAVEFORM_MODELS and "features" not in trial.user_attrs:
        trial.suggest_categorical("features", list(SPECTROGRAM_FRONT_ENDS))
