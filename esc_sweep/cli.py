"""``esc-sweep`` / ``python -m esc_sweep``.

``esc-sweep predict ...``, ``esc-sweep serve ...`` and ``esc-sweep plots ...``
are subcommands; anything else is a Hydra command line for training.
"""

from __future__ import annotations

import sys

SUBCOMMANDS = {
    "predict": "esc_sweep.app.predict",
    "serve": "esc_sweep.app.serve",
    "plots": "esc_sweep.app.plots",
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


def version_text() -> str:
    """The package version and the torch stack it runs on (importing both proves they load together)."""
    import torch
    import torchaudio

    from esc_sweep import __version__

    if torch.version.cuda is None:
        cuda = "CPU-only build"
    else:
        cuda = f"CUDA {torch.version.cuda}, " + (
            f"{torch.cuda.device_count()} GPU(s) visible" if torch.cuda.is_available() else "no GPU visible")
    return f"esc_sweep {__version__} (torch {torch.__version__}, torchaudio {torchaudio.__version__}, {cuda})"


def main() -> None:
    from esc_sweep.runtime import configure

    configure()  # before anything imports torch
    from esc_sweep.errors import EscSweepError
    from esc_sweep.console import console
    from rich.markup import escape

    _sigterm_as_interrupt()
    if sys.argv[1:2] in (["--version"], ["-V"]):
        print(version_text())
        return
    try:
        if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
            import importlib

            importlib.import_module(SUBCOMMANDS[sys.argv[1]]).main(sys.argv[2:])
            return
        check_overrides(sys.argv[1:])
    except EscSweepError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        sys.exit(2)
    from esc_sweep.app.train import main as train

    train()
