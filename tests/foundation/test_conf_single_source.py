"""One place per config fact: generated over the whole conf tree, not a hand-made list.

- A group option (conf/<group>/<option>.yaml) holds only what picking it changes: a value equal to the
  schema default in esc_sweep/config.py is a second copy of that default (changing the schema would then
  change nothing). The keys that name the option (``IDENTITY``) are exempt: ``optimizer/adamw.yaml`` must
  give adamw whatever the schema's default optimizer is. Recipes (``experiment/``) and searches
  (``hparams_search/``) are exempt too: they pin the values their results were measured with.
- No two files repeat a block: ``MIN_BLOCK`` or more identical ``key: value`` leaves under the same
  config path in two files is a copy; compose it once (a defaults list, ``conf/model/front_end/``).
  Pairs that may agree without copying (``INDEPENDENT``): two families' front ends (each is what its
  own published weights were trained with) and two recipes (each pins what it was measured with).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from esc_sweep import config as schema

CONF = Path(schema.__file__).parent / "conf"
IDENTITY = {"dataset": {"kind", "name"}, "features": {"kind"}, "model": {"name"}, "augmentation": {"name"},
            "optimizer": {"name"}, "scheduler": {"name"}, "tracking": {"enabled"}}
RECIPES = ("experiment", "hparams_search")
MIN_BLOCK = 3
INDEPENDENT = (("model", "front_end"), ("experiment",), ("hparams_search",))
SCHEMAS = {"features": schema.FeaturesConfig, "model": schema.ModelConfig, "augmentation": schema.AugmentationConfig,
           "optimizer": schema.OptimizerConfig, "scheduler": schema.SchedulerConfig, "trainer": schema.TrainerConfig,
           "tracking": schema.TrackingConfig}


def _config_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.yaml") if "hydra" not in p.relative_to(root).parts)


def _package(path: Path, root: Path) -> str:
    """Where the file's keys land: ``_global_`` (the header says so) or its group path (dots)."""
    if "# @package _global_" in path.read_text().splitlines()[:1]:
        return ""
    return ".".join(path.relative_to(root).parent.parts)


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    """Dotted key -> leaf value of a plain (unresolved) yaml tree."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def _own_values(path: Path, root: Path) -> dict[str, Any]:
    """The file's values by dotted config path; its ``defaults`` list (what it composes) left out."""
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    data.pop("defaults", None)
    package = _package(path, root)
    return _leaves(data, package) if package else _leaves(data, "")


_MISSING = object()


def _schema_default(key: str, own: dict[str, Any]) -> Any:
    """The schema's default for a dotted key, or _MISSING (no schema field: a dict's contents, hydra.*, ...)."""
    group, _, rest = key.partition(".")
    if group == "dataset":
        cls = schema.DATASET_SCHEMAS.get(own.get("dataset.kind", "esc50"), schema.DatasetConfig)
    else:
        cls = SCHEMAS.get(group)
    if cls is None or not rest:
        return _MISSING
    value: Any = cls()
    for part in rest.split("."):
        if not dataclasses.is_dataclass(value) or part not in {f.name for f in dataclasses.fields(value)}:
            return _MISSING
        value = getattr(value, part)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b)
    return a == b


def restated_defaults(root: Path = CONF) -> list[str]:
    found = []
    for path in _config_files(root):
        relative = path.relative_to(root)
        if len(relative.parts) < 2 or relative.parts[0] in RECIPES:
            continue  # config.yaml and root-level blocks are no group option; recipes pin their values
        own = _own_values(path, root)
        for key, value in own.items():
            group, _, name = key.partition(".")
            if name in IDENTITY.get(group, ()) or (isinstance(value, str) and "${" in value):
                continue
            default = _schema_default(key, own)
            if default is not _MISSING and _same(value, default):
                found.append(f"{relative}: {key}: {value!r} is the schema default")
    return found


def repeated_blocks(root: Path = CONF) -> list[str]:
    values = {path: _own_values(path, root) for path in _config_files(root)}
    found = []
    for (a, av), (b, bv) in itertools.combinations(values.items(), 2):
        if any(a.relative_to(root).parts[:len(d)] == b.relative_to(root).parts[:len(d)] == d for d in INDEPENDENT):
            continue
        shared: dict[str, list[str]] = {}
        for key in av.keys() & bv.keys():
            if _same(av[key], bv[key]):
                shared.setdefault(key.rpartition(".")[0], []).append(key)
        for parent, keys in shared.items():
            if len(keys) >= MIN_BLOCK:
                found.append(f"{a.relative_to(root)} and {b.relative_to(root)} repeat {sorted(keys)}")
    return found


def test_no_option_restates_a_schema_default():
    found = restated_defaults()
    assert not found, "a yaml option restates the schema (esc_sweep/config.py) default:\n" + "\n".join(found)


def test_no_two_config_files_repeat_a_block():
    found = repeated_blocks()
    assert not found, "copied blocks (compose them once):\n" + "\n".join(found)


def test_the_checks_find_a_restated_default_and_a_copied_block(tmp_path):
    """Both checks can fail: a copy of a schema default and a copied front end are found."""
    (tmp_path / "optimizer").mkdir()
    (tmp_path / "optimizer" / "adamw.yaml").write_text("name: adamw\nlr: 0.001\nbetas: [0.9, 0.999]\n")
    (tmp_path / "model").mkdir()
    block = "  front_end:\n    kind: mel\n    sample_rate: 32000\n    n_mels: 64\n"
    for name in ("a", "b"):
        (tmp_path / "model" / f"{name}.yaml").write_text(f"# @package _global_\nmodel:\n  name: {name}\n{block}")
    assert sorted(restated_defaults(tmp_path)) == [
        "optimizer/adamw.yaml: optimizer.betas: [0.9, 0.999] is the schema default",
        "optimizer/adamw.yaml: optimizer.lr: 0.001 is the schema default",
    ]
    assert repeated_blocks(tmp_path) == [
        "model/a.yaml and model/b.yaml repeat ['model.front_end.kind', 'model.front_end.n_mels', "
        "'model.front_end.sample_rate']"]


@pytest.mark.parametrize("name", [p.stem for p in (CONF / "model").glob("*.yaml")])
def test_a_model_with_pretrained_weights_composes_the_front_end_its_registration_names(name):
    """conf/model/<name>.yaml and the model's registration (PretrainedCfg.front_end) name the same front end."""
    from hydra import compose, initialize_config_dir

    from esc_sweep.models import get_pretrained_cfg, is_model

    schema.register_configs()
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"model={name}"])
    front_end = get_pretrained_cfg(cfg.model.name).front_end if is_model(cfg.model.name) else None
    if front_end is None:
        assert not cfg.model.front_end
        return
    expected = OmegaConf.load(CONF / "model" / "front_end" / f"{front_end}.yaml")
    assert OmegaConf.to_container(cfg.model.front_end) == OmegaConf.to_container(expected)
    assert {k: cfg.features[k] for k in expected} == OmegaConf.to_container(expected)  # features follow it
