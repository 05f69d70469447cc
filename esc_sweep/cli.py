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
import sqlite3
import sys
from pathlib import Path

from esc_sweep import __version__
from esc_sweep.errors import ConfigError, EscSweepError
from esc_sweep.paths import printable_text
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


def check_output_dir(key: str, value: str) -> None:
    """An output folder named on the command line never lands on something esc_sweep keeps.

    Inside a bundle, a run's folder, a fold-checkpoint folder or an MLflow store: refused. A
    finished run's own folder (it holds results.json): refused too, its results would be
    overwritten; an interrupted run's folder (no results.json yet) may be named again to resume it.
    """
    if not value or "${" in value:  # an interpolation (the default's ${now:...}): unique by construction
        return
    from esc_sweep.outputs import enclosing_kept_folder, kept_folder_kind  # deferred: training commands only

    target = Path(value).expanduser().resolve()
    kind = kept_folder_kind(target) if target.is_dir() else None
    if kind == "a run's output folder":
        if (target / "results.json").exists():
            raise ConfigError(f"{key}={value}: {target} holds a finished run (results.json): name a new folder")
        kind = None
    kept = (target, kind) if kind is not None else enclosing_kept_folder(target)
    if kept is not None:
        raise ConfigError(f"{key}={value}: {kept[0]} is {kept[1]}: esc_sweep does not write into it; "
                          "name another folder")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{key}={value} is a file, not a folder: name a folder for the run's outputs")


def check_overrides(args: list[str]) -> None:
    """Hydra instantiates ``hydra.callbacks`` itself, before app.run checks ``_target_`` values: refuse them here."""
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key.startswith(("hydra.callbacks", "hydra/callbacks")):
            raise ConfigError(f"{arg!r}: refused. hydra.callbacks cannot be set from the command line.")
        if key in ("hydra.run.dir", "hydra.sweep.dir"):
            check_output_dir(key, value.strip("'\""))
    from esc_sweep.config import dataset_override_problems  # deferred: hydra/omegaconf, only for training commands

    problems = dataset_override_problems(args)
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else "invalid config:\n  " + "\n  ".join(problems))


def check_override_encoding(args: list[str]) -> None:
    """A path that is not valid UTF-8 cannot pass Hydra's override grammar: say so in one line, naming it."""
    for arg in args:
        if printable_text(arg) != arg:
            raise ConfigError(f"{printable_text(arg)}: Hydra cannot read a value that is not valid UTF-8 (the "
                              f"\\xNN bytes); rename that folder or file, or link to it from a UTF-8 name "
                              f"(ln -s) and give the link")


def _option_value(args: list[str], option: str) -> str | None:
    """The value of ``--option VALUE`` or ``--option=VALUE`` in ``args``, else None."""
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def check_store_of_runs(args: list[str]) -> None:
    """``esc-sweep runs`` reads the MLflow store: a missing or damaged one is one line, never an empty new one."""
    if any(a in HELP_FLAGS for a in args):
        return
    from esc_sweep.tracking.uri import check_store_readable, resolve_tracking_uri  # deferred: omegaconf

    check_store_readable(_option_value(args, "--tracking-uri") or resolve_tracking_uri())


def database_error_line(err: BaseException, args: list[str] = ()) -> str | None:
    """One line for a database error that reached the command line (a store damaged past the checks), else None.

    ``args``: the subcommand's arguments, to name the MLflow store it used.
    """
    seen = err
    while seen is not None:
        module = type(seen).__module__
        if isinstance(seen, sqlite3.Error) or (module.startswith("sqlalchemy") and "Error" in type(seen).__name__):
            detail = str(getattr(seen, "orig", None) or seen).strip().splitlines()
            return (f"a database this command reads could not be used ({detail[0] if detail else type(seen).__name__})"
                    f": {_store_in_use(args)} or the Optuna study file it names is damaged or locked; move it "
                    f"away or restore it from a backup")
        seen = seen.__cause__ or seen.__context__
    return None


def _store_in_use(args: list[str]) -> str:
    from esc_sweep.tracking.uri import resolve_tracking_uri  # deferred: omegaconf, only after a failure

    return f"the MLflow store {_option_value(list(args), '--tracking-uri') or resolve_tracking_uri()}"


def check_working_folder(args: list[str]) -> None:
    """Training writes outputs/ in the working folder (Hydra's ``hydra.run.dir``): a read-only one is one line.

    Hydra would create the folder itself and fail with a traceback.
    """
    informational = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")
    if any(a in informational for a in args) or any(a.lstrip("+").startswith(("hydra.run.dir=", "hydra.sweep.dir="))
                                                    for a in args):
        return
    import tempfile  # deferred: only for training

    folder = Path.cwd() / "outputs"
    folder = folder if folder.is_dir() else Path.cwd()
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise EscSweepError(
            f"cannot write in {folder} ({err.strerror or err}): training writes its outputs there; run from a "
            f"writable folder, or set hydra.run.dir (and trainer.checkpoint_dir, tracking.uri) to writable places"
        ) from None


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
            if sys.argv[1] == "runs":
                check_store_of_runs(sys.argv[2:])
            importlib.import_module(SUBCOMMANDS[sys.argv[1]]).main(sys.argv[2:])
            return
        check_overrides(sys.argv[1:])
        check_override_encoding(sys.argv[1:])
        check_working_folder(sys.argv[1:])
    except EscSweepError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - only database errors are worded; the rest keep their traceback
        line = database_error_line(err, sys.argv[2:])
        if line is None:
            raise
        console.print(f"[bold red]error:[/] {escape(line)}")
        sys.exit(2)
    from esc_sweep.app.train import main as train  # deferred: training app (~0.6 s, then torch): not for subcommands

    try:
        train()
    except KeyboardInterrupt:
        # A sweep (-m) stopped with Ctrl-C or SIGTERM: the running trial is recorded as failed
        # ("interrupted") and is run again when the same command resumes the study.
        console.print("[bold yellow]interrupted:[/] the study is saved; run the same command again to resume it.")
        sys.exit(130)
