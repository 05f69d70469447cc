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


def main() -> None:
    _sigterm_as_interrupt()
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        import importlib

        from esc_sweep.errors import EscSweepError
        from esc_sweep.progress import console

        module = importlib.import_module(SUBCOMMANDS[sys.argv[1]])
        try:
            module.main(sys.argv[2:])
        except EscSweepError as err:
            console.print(f"[bold red]error:[/] {err}")
            sys.exit(2)
        return
    from esc_sweep.app import main as train

    train()
