"""``esc-sweep serve <bundle> [more bundles...] [--host 127.0.0.1] [--port 8000]``: a Gradio app to try models.

Upload a file or record one with the microphone and see each model's top-5 labels and the
spectrogram with per-window predictions; tag the microphone live; tag a batch of files into a
table and a CSV. Several bundles (or MLflow run ids) get one column each, on the same input.
Gradio's HTTP API serves the same functions (``gradio_client`` calls ``/classify``, ``/batch``).

Needs the ``app`` extra (``pip install -c constraints.txt -e '.[app]'``). It listens on 127.0.0.1 by default:
the app has no authentication. Uploads are limited in size (``--max-upload-mb``) and duration
(600 s, read from the header before any decoding), and decoded window by window. Requests wait
in Gradio's queue (``--concurrency`` run at once per function), they are never dropped.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from esc_sweep.errors import EscSweepError

DEFAULT_MAX_UPLOAD_MB = 64.0
DEFAULT_CONCURRENCY = 2  # inferences at once per function; more only divide the same CPU cores
MAX_EXAMPLES = 12
# The versions the tests ran with come from constraints.txt, as for the dashboard extra.
INSTALL_HINT = "esc-sweep serve needs Gradio: pip install -c constraints.txt -e '.[app]' (in the esc_sweep checkout; or: pip install gradio)"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="esc-sweep serve",
                                     description="A Gradio app to tag uploaded, recorded and live audio.")
    parser.add_argument("bundles", nargs="+", metavar="bundle",
                        help="bundle folder (<run output dir>/bundle) or MLflow run id; several: side by side")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for run ids (default: as training)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest accepted upload in MiB (default {DEFAULT_MAX_UPLOAD_MB:g})")
    parser.add_argument("--examples", metavar="DIR",
                        help=f"a folder of audio files offered as examples (the first {MAX_EXAMPLES})")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help=f"requests computed at once per function; the rest wait in the queue "
                             f"(default {DEFAULT_CONCURRENCY})")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise EscSweepError(f"--port {args.port}: must be between 0 and 65535")
    if not args.max_upload_mb > 0:
        raise EscSweepError(f"--max-upload-mb {args.max_upload_mb}: must be > 0")
    if args.concurrency < 1:
        raise EscSweepError(f"--concurrency {args.concurrency}: must be at least 1")


def find_examples(folder: str | None) -> list[Path]:
    """The first MAX_EXAMPLES audio files of ``folder`` (recursively, sorted); none without a folder."""
    if folder is None:
        return []
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise EscSweepError(f"--examples {folder}: not a folder")
    from esc_sweep.app.predict import collect_files  # deferred: app.predict imports torch (~15 s loaded machine)

    return [p.resolve() for p in collect_files([str(path)])[:MAX_EXAMPLES]]


def free_port(host: str) -> int:
    """A port nobody listens on now (Gradio needs a number; 0 means 'pick one' to us)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe_socket:
        probe_socket.bind((host, 0))
        return int(probe_socket.getsockname()[1])


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    check_args(args)
    # deferred: Gradio is imported here, not at the top: it takes seconds to import (~19 s measured
    # on a loaded machine), which every other subcommand (and `esc-sweep --help`) would pay. It is an optional extra.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a lab machine
    try:
        import gradio  # noqa: F401  # deferred: optional extra [app]
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        sys.exit(2)
    from esc_sweep.app.gradio_app import build_app  # deferred: imports gradio, the optional extra [app]
    from esc_sweep.bundle import load_bundle  # deferred: torch and the models (~5 s): after the argument checks

    examples = find_examples(args.examples)  # before loading models: a bad folder fails fast
    bundles = [load_bundle(source, device=args.device, tracking_uri=args.tracking_uri) for source in args.bundles]
    demo = build_app(bundles, examples, args.max_upload_mb)
    # Every request waits its turn in the queue (no size limit: none is dropped).
    demo.queue(default_concurrency_limit=args.concurrency, max_size=None)
    # --port 0: a free port is picked here (Gradio needs a number); another process may take it
    # before Gradio binds it, so a few picks are tried.
    for attempt in range(1 if args.port else 5):
        port = args.port or free_port(args.host)
        try:
            demo.launch(
                server_name=args.host,
                server_port=port,
                prevent_thread_lock=True,
                quiet=True,
                ssr_mode=False,  # server-side rendering needs Node.js; the page renders in the browser
                max_file_size=int(args.max_upload_mb * 2**20),
                allowed_paths=[str(Path(args.examples).expanduser().resolve())] if examples else None,
                footer_links=["api"],
            )
            break
        except OSError as err:
            if args.port == 0 and attempt < 4:
                continue
            raise EscSweepError(f"cannot listen on {args.host}:{args.port} ({err.strerror or err}): "
                                f"pick another --port") from None
    # Printed on stdout (tests and scripts read the port from it when --port 0).
    for source, bundle in zip(args.bundles, bundles):
        print(f"esc-sweep serve: {source}: {bundle.describe()}", flush=True)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"Serving on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        while True:  # Gradio serves from its own threads
            time.sleep(0.5)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM, which the CLI turns into one
        pass
    finally:
        demo.close()


def serve_until_interrupted(server: Any) -> None:
    """Serve a ``socketserver`` server until Ctrl-C (or SIGTERM), then close its socket (``esc-sweep dashboard``)."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
