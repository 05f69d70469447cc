"""The package's imports point one way: foundation -> data -> features -> models -> training
-> figures -> tracking -> sweep -> bundle -> app. MLflow is imported only in esc_sweep.tracking.

Walks every module's AST, module-level and function-level imports alike. An import inside a
function says why it is there: a ``# deferred:`` comment (the start-up time it saves, the
optional extra it needs, or the cycle it avoids) on its line or the comment line above.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "esc_sweep"

# Lower rank = closer to the foundation. A module may import its own rank or lower.
RANKS = {
    "errors": 0, "paths": 0, "console": 0, "runtime": 0, "config": 0, "safety": 0, "stats": 0, "outputs": 0, "stores": 0, "__init__": 0,
    "data": 1,
    "features": 2,
    "models": 3,
    "training": 4,
    "figures": 5,
    "tracking": 6,
    "sweep": 7,
    "bundle": 7,
    "app": 9, "cli": 9, "__main__": 9,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module in ("esc_sweep", *(f"esc_sweep.{s}" for s in RANKS)):  # from esc_sweep.x import y
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _edges():
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _module_name(path)
        for line, target in _imports(path):
            yield path, line, source, target


def test_every_module_has_a_rank():
    stages = {_stage(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert stages <= set(RANKS), f"modules without a place in the layout: {sorted(stages - set(RANKS))}"


def test_imports_point_one_way():
    backwards = []
    for path, line, source, target in _edges():
        if not target.startswith("esc_sweep.") or target.split(".")[1] not in RANKS:
            continue
        src, dst = _stage(source), _stage(target)
        if RANKS[dst] > RANKS[src]:
            backwards.append(f"{path.relative_to(PACKAGE.parent)}:{line} {source} -> {target} "
                             f"({src} rank {RANKS[src]} imports {dst} rank {RANKS[dst]})")
    print(f"checked {sum(1 for _ in _edges())} import statements in {len(list(PACKAGE.rglob('*.py')))} modules")
    assert not backwards, "imports pointing back up the pipeline:\n" + "\n".join(backwards)


def test_mlflow_is_imported_only_by_the_tracking_package():
    outside = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path, line, source, target in _edges()
               if target.split(".")[0] == "mlflow" and _stage(source) != "tracking"]
    assert not outside, f"mlflow imported outside esc_sweep.tracking: {outside}"


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """A backward edge hidden in a function is found (the test can fail)."""
    module = tmp_path / "esc_sweep" / "data" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from esc_sweep.training.loop import fit\n    from ..app import train\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "esc_sweep"
    try:
        targets = [t for _, t in _imports(module)]
    finally:
        PACKAGE = saved
    assert "esc_sweep.training.loop" in targets and "esc_sweep.app" in targets


DEFERRED = re.compile(r"#\s*deferred:")


def _undeclared_function_imports(source: str) -> list[tuple[int, str]]:
    """(line, text) of imports inside a function with no ``# deferred:`` comment on the line or just above."""
    lines = source.splitlines()
    found = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if not isinstance(inner, (ast.Import, ast.ImportFrom)):
                continue
            line = lines[inner.lineno - 1]
            above = lines[inner.lineno - 2].strip() if inner.lineno > 1 else ""
            if not (DEFERRED.search(line) or (above.startswith("#") and DEFERRED.match(above))):
                found.add((inner.lineno, line.strip()))
    return sorted(found)


def test_every_function_level_import_says_why_it_is_deferred():
    """Function-level imports stay only where they save start-up time (or avoid a cycle), and say so."""
    missing = [f"{path.relative_to(PACKAGE.parent)}:{line}  {text}"
               for path in sorted(PACKAGE.rglob("*.py"))
               for line, text in _undeclared_function_imports(path.read_text())]
    assert not missing, ("imports inside functions without a '# deferred: <what it saves>' comment "
                         "(hoist them to the top if they save nothing):\n" + "\n".join(missing))


def test_the_deferred_checker_flags_an_uncommented_function_import():
    source = (
        "import os\n"
        "def f():\n"
        "    import json\n"
        "    import torch  # deferred: torch (~3 s)\n"
        "    # deferred: optional extra [app]\n"
        "    import gradio\n"
        "    # a comment that is not a reason\n"
        "    import csv\n"
        "    x = 1  # deferred: not an import\n"
        "    import re\n"
        "class C:\n"
        "    def m(self):\n"
        "        from math import pi\n"
    )
    assert [line for line, _ in _undeclared_function_imports(source)] == [3, 8, 10, 13]
