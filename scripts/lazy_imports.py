"""Every function-level import in esc_sweep, and what importing it at module level would cost.

    .venv/bin/python scripts/lazy_imports.py            # table: file, line, module, cost, comment
    .venv/bin/python scripts/lazy_imports.py --json out.json

For each ``import`` inside a function, it starts a fresh interpreter, imports the
enclosing module, then times importing the lazily imported module on top of it:
that is the start-up time the function-level import saves for everyone who imports
the enclosing module without calling the function. A module already loaded by
then costs 0 s: hoisting it is free unless it would close an import cycle.
Optional packages that are not installed are reported as "not installed".
Timings are wall-clock on this machine; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "esc_sweep"

PROBE = """
import importlib, sys, time
importlib.import_module({owner!r})
already = {target!r} in sys.modules
started = time.perf_counter()
try:
    importlib.import_module({target!r})
except ImportError:
    print("missing"); raise SystemExit
print("loaded" if already else f"{{time.perf_counter() - started:.3f}}")
"""


def function_level_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, imported module, comment on that line or the line above) for imports inside functions."""
    source = path.read_text()
    lines = source.splitlines()
    module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                targets = [alias.name for alias in inner.names]
            elif isinstance(inner, ast.ImportFrom):
                base = inner.module or ""
                if inner.level:  # relative: resolve against this module's package
                    package = module.split(".")[: len(module.split(".")) - inner.level + (path.name == "__init__.py")]
                    base = ".".join(package + ([base] if base else []))
                targets = [base]
            else:
                continue
            line = lines[inner.lineno - 1]
            above = lines[inner.lineno - 2].strip() if inner.lineno > 1 else ""
            comment = line.split("#", 1)[1].strip() if "#" in line else (above[1:].strip() if above.startswith("#") else "")
            found.extend((inner.lineno, target, comment) for target in targets)
    return sorted(set(found))


LOADED = """
import importlib, json, sys
importlib.import_module({owner!r})
print(json.dumps([t for t in {targets!r} if t in sys.modules]))
"""


def already_loaded(owner: str, targets: list[str]) -> set[str]:
    """The targets importing ``owner`` loads anyway (hoisting them costs nothing)."""
    out = subprocess.run([sys.executable, "-c", LOADED.format(owner=owner, targets=targets)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    return set(json.loads(out.stdout.strip().splitlines()[-1])) if out.returncode == 0 else set()


def cost(owner: str, target: str) -> str:
    probe = PROBE.format(owner=owner, target=target)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else f"error: {out.stderr.strip()[-80:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        owner = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        found = function_level_imports(path)
        if not found:
            continue
        loaded = already_loaded(owner, sorted({target for _, target, _ in found}))
        for line, target, comment in found:
            rows.append({"file": str(path.relative_to(REPO)), "line": line, "module": target,
                         "cost": "loaded" if target in loaded else cost(owner, target), "comment": comment})
            print(f"{rows[-1]['file']}:{line}  {target}  {rows[-1]['cost']}  # {comment}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
