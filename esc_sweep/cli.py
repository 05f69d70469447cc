"""``esc-sweep`` / ``python -m esc_sweep``.

``esc-sweep predict ...``, ``esc-sweep serve ...``, ``esc-sweep plots ...``,
``esc-sweep runs ...`` (every key of SUBCOMMANDS) are subcommands; anything
else is a Hydra command line for training. ``esc-sweep --help`` lists the
subcommands, then Hydra prints the training help
(``conf/hydra/help/esc_sweep.yaml``: config groups, main keys, examples).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import signal
import sys

from esc_sweep import __version__
from esc_sweep.errors import ConfigError, EscSweepError
from esc_sweep.runtime import configure

SUBCOMMANDS = {
    "predict": "esc_sweep.app.predict",
    "serve": "esc_sweep.app.serve",
    "plots": "esc_sweep.app.plots",
    "runs": "esc_sweep.app.runs",
    "compare": "esc_sweep.app.compare",
    "nested": "esc_sweep.app.nested",
    "dashboard": "esc_sweep.app.dashboard",
}

HELP_FLAGS = ("--help", "-h")


def _summary(module: str) -> tuple[str, str]:
    """(usage, one line) from the first line of a subcommand module's docstring, without importing it.

    The docstrings start ``\`\`esc-sweep name ARGS\`\`: what it does.``
    """
    try:
        spec = importlib.util.find_spec(module)
        source = open(spec.origin, encoding="utf-8").read() if spec and spec.origin else ""
        doc = ast.get_docstring(ast.parse(source)) or ""
    except (ImportError, OSError, SyntaxError, ValueError):
        doc = ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    usage, sep, rest = first.partition("``:")
    if sep:
        return usage.strip("` "), rest.strip()
    return "", first


def subcommands_help() -> str:
    """The overview ``esc-sweep --help`` prints before the training help."""
    rows = [(name, *_summary(module)) for name, module in SUBCOMMANDS.items()]
    width = max(len(name) for name, _, _ in rows)
    lines = [
        "esc-sweep: cross-validated experiment sweeps for environmental sound classification",
        "",
        "Usage:",
        "  esc-sweep [group=option ...] [key=value ...]   train: cross-validate one configuration (the default)",
        "  esc-sweep -m hparams_search=NAME ...           sweep: an Optuna search over configurations",
        "  esc-sweep SUBCOMMAND [options]                 one of the subcommands below",
        "  (python -m esc_sweep ... is the same command)",
        "",
        "Subcommands (esc-sweep SUBCOMMAND --help for its options):",
    ]
    for name, usage, line in rows:
        lines.append(f"  {name.ljust(width)}  {line or '(no description)'}")
        if usage:
            lines.append(f"  {' ' * width}  usage: {usage}")
    lines += [
        "",
        "Training help follows: config groups and their options, the main keys, examples.",
        "Also: esc-sweep --cfg job (the resolved config), --info defaults-tree (the chosen options),",
        "--hydra-help (Hydra's own flags), --version.",
        "",
    ]
    return "\n".join(lines)


def _sigterm_as_interrupt() -> None:
    """Treat SIGTERM (job schedulers, ``kill``) like Ctrl-C, so runs end KILLED and checkpoints stay."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def check_overrides(args: list[str]) -> None:
    """Hydra instantiates ``hydra.callbacks`` itself, before app.run checks ``_target_`` values: refuse them here."""
    for arg in args:
        key = arg.lstrip("+~").partition("=")[0]
        if key.startswith(("hydra.callbacks", "hydra/callbacks")):
            raise ConfigError(f"{arg!r}: refused. hydra.callbacks cannot be set from the command line.")
    from esc_sweep.config import dataset_override_problems  # deferred: hydra/omegaconf, only for training commands

    problems = dataset_override_problems(args)
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else "invalid config:\n  " + "\n  ".join(problems))


def version_text() -> str:
    """The package version and the torch stack it runs on (importing both proves they load together)."""
    # deferred: torch and torchaudio (~3.7 s): only --version pays for them, never --help
    import torch
    import torchaudio  # deferred: as above

    if torch.version.cuda is None:
        cuda = "CPU-only build"
    else:
        cuda = f"CUDA {torch.version.cuda}, " + (
            f"{torch.cuda.device_count()} GPU(s) visible" if torch.cuda.is_available() else "no GPU visible")
    return f"esc_sweep {__version__} (torch {torch.__version__}, torchaudio {torchaudio.__version__}, {cuda})"


def main() -> None:
    configure()  # before anything imports torch
    # deferred: rich (~0.15 s): importing esc_sweep.cli (its help text, tests) stays light; main pays it once
    from esc_sweep.console import console
    from rich.markup import escape  # deferred: as above

    _sigterm_as_interrupt()
    if sys.argv[1:2] in (["--version"], ["-V"]):
        print(version_text())
        return
    if sys.argv[1:2] and sys.argv[1] in HELP_FLAGS:
        # The subcommands first; Hydra then prints the training help (and exits).
        print(subcommands_help(), flush=True)
    try:
        if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
            importlib.import_module(SUBCOMMANDS[sys.argv[1]]).main(sys.argv[2:])
            return
        check_overrides(sys.argv[1:])
    except EscSweepError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        sys.exit(2)
    from esc_sweep.app.train import main as train  # deferred: training app (~0.6 s, then torch): not for subcommands

    try:
        train()
    except KeyboardInterrupt:
        # A sweep (-m) stopped with Ctrl-C or SIGTERM: the running trial is recorded as failed
        # ("interrupted") and is run again when the same command resumes the study.
        console.print("[bold yellow]interrupted:[/] the study is saved; run the same command again to resume it.")
        sys.exit(130)
