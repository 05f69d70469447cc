"""Private APIs of Optuna, hydra-optuna-sweeper and Hydra's JobReturn are used in one module only.

``esc_sweep/sweep/optuna_private.py`` holds every such use, so that an upgrade of those packages is
checked in one file. This test reads the private names those packages define (functions, classes,
attributes they assign, private modules) from their installed sources, and walks esc_sweep and the
sweeper plugin for any use of one: an attribute ``x._name`` on anything but ``self``/``cls``, a
``self._name`` that a subclass of the plugin's sweeper inherits, or an import from a private module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hydra.core.utils
import optuna
import pytest
from hydra_plugins import hydra_optuna_sweeper

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = ROOT / "esc_sweep" / "sweep" / "optuna_private.py"
SCANNED = [ROOT / "esc_sweep", ROOT / "hydra_plugins" / "esc_sweep_sweeper"]
PRIVATE_MODULE_OWNERS = ("optuna", "hydra_plugins.hydra_optuna_sweeper", "hydra.core.utils")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_names(paths: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _is_private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _is_private(node.attr):
                names.add(node.attr)
    return names


def _plugin_methods() -> set[str]:
    impl = Path(hydra_optuna_sweeper.__file__).parent / "_impl.py"
    tree = ast.parse(impl.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "OptunaSweeperImpl"]
    return {n.name for n in cls.body if isinstance(n, ast.FunctionDef) and _is_private(n.name)}


THIRD_PARTY_PRIVATE = _private_names(
    sorted(Path(optuna.__file__).parent.rglob("*.py"))
    + sorted(Path(hydra_optuna_sweeper.__file__).parent.rglob("*.py"))
    + [Path(hydra.core.utils.__file__)]
)
PLUGIN_METHODS = _plugin_methods()


def private_uses(path: Path) -> list[str]:
    """``file:line: code`` for every use of a third-party private name in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if (not on_self and node.attr in THIRD_PARTY_PRIVATE) or (on_self and node.attr in PLUGIN_METHODS):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.startswith(PRIVATE_MODULE_OWNERS) and any(_is_private(p) for p in module.split(".")):
                    found.append(f"{where}:{node.lineno}: import {module}")
    return found


def test_the_scan_knows_the_private_names_it_looks_for():
    # If Optuna renames these, optuna_private.py needs the upgrade, and this scan must still see them.
    assert {"_storage", "_trial_id", "_study_id", "_get_stale_trial_ids", "_return_value"} <= THIRD_PARTY_PRIVATE
    assert {"_configure_trials", "_get_directions", "_to_grid_sampler_choices"} <= PLUGIN_METHODS
    uses = "\n".join(private_uses(ALLOWED))
    for name in ("study._storage", "trial._trial_id", "import optuna.samplers._lazy_random_state",
                 "impl._configure_trials", "ret._return_value"):
        assert name in uses


def test_private_uses_elsewhere_are_found(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from optuna.samplers._lazy_random_state import LazyRandomState\n"
        "class S:\n"
        "    def f(self, study, trial):\n"
        "        self._configure_trials([trial], {}, {}, [])\n"
        "        return study._storage, trial._trial_id, self._own_helper()\n"
    )
    uses = private_uses(sample)
    assert [u.split(": ", 1)[1] for u in uses] == [
        "import optuna.samplers._lazy_random_state", "self._configure_trials", "study._storage", "trial._trial_id"]


@pytest.mark.parametrize("root", SCANNED, ids=lambda p: p.name)
def test_no_private_optuna_use_outside_optuna_private(root):
    uses = [use for path in sorted(root.rglob("*.py")) if path != ALLOWED for use in private_uses(path)]
    assert not uses, "private Optuna/plugin API used outside esc_sweep/sweep/optuna_private.py:\n" + "\n".join(uses)
