"""``esc-sweep dashboard <storage URL or study file>``: optuna-dashboard for a study storage.

Starts optuna-dashboard (the ``dashboard`` extra) on 127.0.0.1 only: the page can
change studies (notes, deletions), so it is not offered to the network. From
another machine, forward the port (``ssh -L 8080:127.0.0.1:8080 host``).

    esc-sweep dashboard outputs/optuna/esc50_optuna.db
    esc-sweep dashboard sqlite:///outputs/optuna/esc50_optuna.db --port 8081
    esc-sweep dashboard journal:///shared/studies/esc50.log
    esc-sweep dashboard postgresql://esc@db:5432/optuna
"""

from __future__ import annotations

import argparse
import socketserver
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from esc_sweep.app.serve import serve_until_interrupted
from esc_sweep.errors import EscSweepError
from esc_sweep.paths import special_kind
from esc_sweep.stores import sqlite_problem

HOST = "127.0.0.1"
OPTUNA_TABLES = ("studies",)  # every Optuna RDB storage has it
INSTALL_HINT = ("optuna-dashboard is not installed: pip install -c constraints.txt -e '.[dashboard]' "
                "(or: pip install optuna-dashboard)")


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass  # one line per request would drown the terminal (the page polls)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="esc-sweep dashboard",
        description="Browse Optuna studies with optuna-dashboard, on http://127.0.0.1:<port>/.",
    )
    parser.add_argument("storage", help="a storage URL (sqlite:///..., postgresql://..., journal:///...) or a "
                                        "study file (.db/.sqlite: SQLite; anything else: an Optuna journal file)")
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080; 0: any free port)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise EscSweepError(f"--port {args.port}: must be between 0 and 65535")
    try:
        import optuna_dashboard  # deferred: optional extra [dashboard] (~17 s measured, loaded machine)
    except ImportError:
        raise EscSweepError(INSTALL_HINT) from None
    # deferred: esc_sweep.sweep.storage imports optuna (~1.2 s) — a missing extra or a bad --port fails first
    from esc_sweep.sweep.storage import local_file, mask_url, open_storage, url_for

    url = url_for(args.storage, Path.cwd())
    path = local_file(url)
    if path is not None and not path.is_file():  # do not create an empty study file by mistake
        kind = special_kind(path) or ("a folder" if path.is_dir() else None)
        raise EscSweepError(f"{args.storage}: {path} is {kind}, not a study file" if kind else
                            f"{args.storage}: no study file at {path}")
    if path is not None and url.startswith("sqlite:"):
        # Optuna would serve a damaged file (or add its tables to another program's database, e.g. mlflow.db).
        problem = sqlite_problem(path, OPTUNA_TABLES)
        if problem is not None:
            raise EscSweepError(f"study file {path} {problem}: give an Optuna study file (outputs/optuna/<study>.db), "
                                f"or move a damaged one away and restore it from a backup")
    storage = open_storage(url)
    names = [study.study_name for study in storage.get_all_studies()]
    try:
        server = make_server(HOST, args.port, optuna_dashboard.wsgi(storage), server_class=_Server,
                             handler_class=_QuietHandler)
    except OSError as err:
        raise EscSweepError(f"cannot listen on {HOST}:{args.port} ({err.strerror or err}): pick another --port") \
            from None
    port = server.server_address[1]
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
    # On stdout (tests and scripts read the port from it when --port 0).
    print(f"esc-sweep dashboard: {mask_url(url)}: {len(names)} studies ({shown or 'none yet'})", flush=True)
    print(f"Serving optuna-dashboard on http://{HOST}:{port}/ (Ctrl-C to stop)", flush=True)
    serve_until_interrupted(server)
