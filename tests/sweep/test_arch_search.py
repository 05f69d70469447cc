"""arch_search chooses front end x model family, and never samples a pair that cannot run."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import esc_sweep

from esc_sweep.config import WAVEFORM_MODELS, validate
from esc_sweep.errors import ConfigError
from esc_sweep.sweep.search_spaces import SPECTROGRAM_FRONT_ENDS, arch_knobs
from tests.conftest import compose_config


def model_choices() -> list[str]:
    search = OmegaConf.load(Path(esc_sweep.__file__).parent / "conf" / "hparams_search" / "arch_search.yaml")
    parsed = OverridesParser.create().parse_override(f"model={search.hydra.sweeper.params.model}")
    return [str(c) for c in parsed.value().list]


def sampled_trials(n: int) -> list[dict]:
    models = model_choices()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trials = []
    for _ in range(n):
        trial = study.ask({"model": optuna.distributions.CategoricalDistribution(models)})
        arch_knobs(None, trial)
        trials.append(dict(trial.params))
        study.tell(trial, 0.0)
    return trials


def test_arch_search_offers_every_front_end_and_the_waveform_model():
    assert "envnet_v2" in model_choices() and "baseline_cnn" in model_choices()
    trials = sampled_trials(60)
    assert {t.get("features") for t in trials} == {None, *SPECTROGRAM_FRONT_ENDS}
    for t in trials:  # the front end is suggested for spectrogram models only, never for envnet_v2
        assert ("features" in t) == (t["model"] not in WAVEFORM_MODELS), t
        if t["model"] in WAVEFORM_MODELS:
            assert "model.drop_path" not in t and "model.width" not in t


def test_every_pair_the_search_can_sample_is_valid_and_the_others_are_refused():
    cheap = ["model=baseline_cnn"]  # timm families validate alike; their names only matter to timm
    for front_end in SPECTROGRAM_FRONT_ENDS:
        validate(compose_config(cheap + [f"features={front_end}"]))
    validate(compose_config(["model=envnet_v2"]))
    with pytest.raises(ConfigError, match="takes a spectrogram"):
        validate(compose_config(["model=resnet18", "features.kind=waveform"]))
    with pytest.raises(ConfigError, match="takes the waveform"):
        validate(compose_config(["model=envnet_v2", "features.kind=leaf"]))
