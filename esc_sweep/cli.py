"""``esc-sweep`` / ``python -m esc_sweep``.

``esc-sweep predict ...``, ``esc-sweep serve ...`` and ``esc-sweep plots ...``
are subcommands; anything else is a Hydra command line for training.
"""

from __future__ import annotations

import sys

SUBCOMMANDS = {
    "predict": "esc_sweep.predict",
    "serve": "esc_sweep.serve",
    "plots": "esc_sweep.plots",
}


def _sigterm_as_interrupt() -> None:
    """Treat SIGTERM (job schedulers, ``kill``) like Ctrl-C, so runs end KILLED and checkpoints stay."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def check_overrides(args: list[str]) -> None:
    """Hydra instantiates ``hydra.callbacks`` itself, before app.run checks ``_target_`` values: refuse them here."""
    from esc_sweep.errors import ConfigError

    for arg in args:
        key = arg.lstrip("+~").partition("=")[0]
        if key.startswith(("hydra.callbacks", "hydra/callbacks")):
            raise ConfigError(f"{arg!r}: refused. hydra.callbacks cannot be set from the command line.")


def main() -> None:
    from esc_sweep.cpu_runtime import configure

    configure()  # before anything imports torch
    from esc_sweep.errors import EscSweepError
    from esc_sweep.progress import console
    from rich.markup import escape

    _sigterm_as_interrupt()
    try:
        if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
            import importlib

            importlib.import_module(SUBCOMMANDS[sys.argv[1]]).main(sys.argv[2:])
            return
        check_overrides(sys.argv[1:])
    except EscSweepError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        sys.exit(2)
    from esc_sweep.app import main as train

    train()
