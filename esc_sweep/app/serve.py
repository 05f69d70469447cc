"""``esc-sweep serve <bundle> [--host 127.0.0.1] [--port 8000]``: a small web page to try a model.

The page has one file input. Uploading a clip shows its top-5 labels with
probabilities and its log-spectrogram (an inline base64 PNG). Scripts can
POST the same form to ``/api/predict`` and get JSON.

Standard library ``http.server`` with one thread per request; uploads are
parsed with ``python-multipart`` and decoded exactly like ``esc-sweep
predict`` does (any format soundfile reads, any sample rate, any length).
It is meant for a laptop or a lab machine, so it listens on 127.0.0.1 by
default.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import torch

from esc_sweep.errors import EscSweepError

DEFAULT_MAX_UPLOAD_MB = 64.0
MAX_DRAIN_BYTES = 256 * 1024 * 1024
# The spectrogram on the page covers at most this many seconds (prediction uses the whole file).
MAX_SPECTROGRAM_SECONDS = 30.0
MAX_UPLOAD_SECONDS = 600.0  # from the file's header, checked before any decoding
LISTEN_BACKLOG = 128  # connections waiting for accept(); the stdlib default of 5 reset 20 concurrent uploads
READ_TIMEOUT_SECONDS = 30.0  # a client that stops sending is dropped instead of holding a thread
TOP_K = 5


class UploadError(EscSweepError):
    """The request holds no usable audio file; the message is shown on the page."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------
# Classifying one upload


def read_upload(headers: Any, stream: Any, max_bytes: int) -> tuple[str, bytes]:
    """``(file name, bytes)`` of the first file in a multipart/form-data request body."""
    from python_multipart import parse_form
    from python_multipart.exceptions import FormParserError

    content_type = headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadError("send the audio file as multipart/form-data (the page's upload form does)")
    length_text = headers.get("Content-Length")
    if length_text is None:
        raise UploadError("the request has no Content-Length", HTTPStatus.LENGTH_REQUIRED)
    try:
        length = int(length_text)
    except ValueError:
        raise UploadError(f"bad Content-Length {length_text!r}") from None
    if length > max_bytes:
        _discard(stream, length)
        raise UploadError(
            f"the upload is {length / 2**20:.2f} MiB; the limit is {max_bytes / 2**20:.2f} MiB (--max-upload-mb)",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    files: list[Any] = []
    try:
        parse_form(
            {"Content-Type": content_type.encode("latin-1"), "Content-Length": str(length).encode()},
            stream,
            on_field=lambda field: None,
            on_file=files.append,
        )
    except (FormParserError, ValueError) as err:
        raise UploadError(f"the upload could not be parsed ({err})") from None
    files = [f for f in files if f.file_name]
    if not files:
        raise UploadError("no file was uploaded: choose an audio file first")
    upload = files[0]
    upload.file_object.seek(0)
    data = upload.file_object.read()
    name = os.path.basename(upload.file_name.decode("utf-8", "replace")) or "upload"
    if not data:
        raise UploadError(f"{name} is empty")
    return name, data


def _discard(stream: Any, length: int) -> None:
    """Read and drop a refused body, so the client gets to read the refusal.

    A client still sending when the server closes sees a broken connection, not
    the 413 page. Bodies beyond MAX_DRAIN_BYTES are not worth reading: the
    connection is closed and that client gets the reset.
    """
    if length > MAX_DRAIN_BYTES:
        return
    while length > 0:
        chunk = stream.read(min(length, 1 << 20))
        if not chunk:
            return
        length -= len(chunk)


def classify(bundle: Any, name: str, data: bytes, lock: threading.Lock) -> dict[str, Any]:
    """Top-k labels and a spectrogram PNG (base64) for an uploaded file's bytes."""
    from esc_sweep.data.audio import iter_windows, probe
    from esc_sweep.figures.audio import figure_png, spectrogram_figure

    suffix = Path(name).suffix.lower()[:16]  # soundfile recognises some formats only by extension
    with tempfile.TemporaryDirectory(prefix="esc_sweep-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            # The header first: a 600 KB FLAC can claim an hour of audio. Then window by window.
            info = probe(path, max_seconds=MAX_UPLOAD_SECONDS)
            total = None if info.frames is None else int(round(info.frames * bundle.sample_rate / info.sample_rate))
            shown_windows = max(1, int(MAX_SPECTROGRAM_SECONDS * bundle.sample_rate) // bundle.clip_samples)
            kept: list = []

            def windows():
                for window in iter_windows(path, bundle.sample_rate, bundle.clip_samples,
                                           max_seconds=MAX_UPLOAD_SECONDS):
                    if len(kept) < shown_windows:
                        kept.append(window)
                    yield window

            with lock:  # one inference at a time: the CPU threads are shared anyway
                probabilities = bundle.predict_windows(windows(), total_samples=total)
                shown = torch.cat(kept)[: total] if total else torch.cat(kept)
                spectrogram = bundle.spectrogram(shown)[0, 0].cpu().numpy()
        except EscSweepError as err:
            # The message names the temporary file; the user knows it by its own name.
            raise UploadError(str(err).replace(str(path), name)) from None
    features = bundle.config["features"]
    seconds = info.seconds if info.seconds is not None else shown.shape[0] / bundle.sample_rate
    title = f"{name}: log-{features['kind']} spectrogram"
    if seconds > MAX_SPECTROGRAM_SECONDS:
        title += f" (first {MAX_SPECTROGRAM_SECONDS:g} of {seconds:.0f} s)"
    figure = spectrogram_figure(spectrogram, bundle.sample_rate, int(features["hop_length"]), features["kind"], title)
    return {
        "file": name,
        "seconds": round(seconds, 3),
        "top": [{"label": label, "probability": p} for label, p in bundle.top_k(probabilities, TOP_K)],
        "spectrogram_png": base64.b64encode(figure_png(figure)).decode("ascii"),
    }


# --------------------------------------------------------------------------
# The page

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; }
.model { color: #666; margin-top: 0; }
form { margin: 1.5rem 0; padding: 1rem; border: 1px solid #ccc; border-radius: .5rem; background: #fafafa; }
button { margin-left: .5rem; padding: .3rem 1rem; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
td, th { padding: .3rem .5rem; text-align: left; border-bottom: 1px solid #eee; }
td.probability { text-align: right; font-variant-numeric: tabular-nums; width: 5rem; }
td.bar-cell { width: 50%; }
.bar { background: #e8892b; height: .9rem; border-radius: .2rem; }
tr.top td.label { font-weight: bold; }
.error { color: #b00020; font-weight: bold; }
img { max-width: 100%; }
"""


def render_page(bundle: Any, result: Optional[dict[str, Any]] = None, error: Optional[str] = None) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>esc_sweep: classify a sound</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Classify a sound</h1>",
        f"<p class='model' id='model'>{e(bundle.describe())}</p>",
        "<form id='upload-form' method='post' action='/' enctype='multipart/form-data'>",
        "<label for='audio-file'>Audio file (WAV, FLAC, OGG, ...; any length and sample rate):</label><br>",
        "<input type='file' id='audio-file' name='audio' accept='audio/*,.wav,.flac,.ogg,.aiff,.aif,.mp3' required>",
        "<button type='submit' id='submit'>Classify</button>",
        "</form>",
    ]
    if error:
        parts.append(f"<p class='error' id='error'>{e(error)}</p>")
    if result:
        parts.append("<section id='results'>")
        parts.append(f"<h2 id='result-file'>{e(result['file'])} <small>({result['seconds']:.1f} s)</small></h2>")
        parts.append("<table id='predictions'><thead><tr><th>#</th><th>label</th><th>probability</th><th></th>"
                     "</tr></thead><tbody>")
        for rank, item in enumerate(result["top"], start=1):
            percent = 100 * item["probability"]
            parts.append(
                f"<tr class='prediction{' top' if rank == 1 else ''}'><td class='rank'>{rank}</td>"
                f"<td class='label'>{e(item['label'])}</td>"
                f"<td class='probability' data-probability='{item['probability']:.6f}'>{percent:.1f}%</td>"
                f"<td class='bar-cell'><div class='bar' style='width:{percent:.1f}%'></div></td></tr>"
            )
        parts.append("</tbody></table>")
        parts.append(
            f"<img id='spectrogram' alt='spectrogram of {e(result['file'])}' "
            f"src='data:image/png;base64,{result['spectrogram_png']}'>"
        )
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts)


# --------------------------------------------------------------------------
# HTTP


class ClassifierServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], bundle: Any, max_upload_bytes: int):
        super().__init__(address, RequestHandler)
        self.bundle = bundle
        self.max_upload_bytes = max_upload_bytes
        self.lock = threading.Lock()


class RequestHandler(BaseHTTPRequestHandler):
    server: ClassifierServer
    server_version = "esc_sweep"
    timeout = READ_TIMEOUT_SECONDS  # socket timeout for every read: a stalled client cannot hold a thread

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send_html(render_page(self.server.bundle))
        elif path == "/health":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/api/model":
            bundle = self.server.bundle
            self._send_json({"model": bundle.describe(), "class_names": bundle.class_names})
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path not in ("/", "/predict", "/api/predict"):
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
            return
        api = path == "/api/predict"
        try:
            name, data = read_upload(self.headers, self.rfile, self.server.max_upload_bytes)
            result = classify(self.server.bundle, name, data, self.server.lock)
        except UploadError as err:
            if err.status in (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.LENGTH_REQUIRED):
                self.close_connection = True  # the unread body must not be taken for the next request
            if api:
                self._send_json({"error": str(err)}, err.status)
            else:
                self._send_html(render_page(self.server.bundle, error=str(err)), err.status)
            return
        if api:
            self._send_json({k: v for k, v in result.items() if k != "spectrogram_png"})
        else:
            self._send_html(render_page(self.server.bundle, result=result))

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_html(self, text: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, text.encode("utf-8"), "text/html; charset=utf-8")

    def _send_json(self, value: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, (json.dumps(value) + "\n").encode("utf-8"), "application/json")

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} - {format % args}\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="esc-sweep serve", description="A web page to classify uploaded clips.")
    parser.add_argument("bundle", help="bundle folder (<run output dir>/bundle) or MLflow run id")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for run ids (default: as training)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest accepted upload in MiB (default {DEFAULT_MAX_UPLOAD_MB:g})")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    from esc_sweep.bundle import load_bundle

    args = parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise EscSweepError(f"--port {args.port}: must be between 0 and 65535")
    if not args.max_upload_mb > 0:
        raise EscSweepError(f"--max-upload-mb {args.max_upload_mb}: must be > 0")
    bundle = load_bundle(args.bundle, device=args.device, tracking_uri=args.tracking_uri)
    try:
        server = ClassifierServer((args.host, args.port), bundle, int(args.max_upload_mb * 2**20))
    except OSError as err:
        raise EscSweepError(f"cannot listen on {args.host}:{args.port} ({err.strerror or err}): pick another --port") from None
    host, port = server.server_address[:2]
    # Printed on stdout (tests and scripts read the port from it when --port 0).
    print(f"esc-sweep serve: {bundle.describe()}", flush=True)
    print(f"Serving on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    serve_until_interrupted(server)


def serve_until_interrupted(server) -> None:
    """Serve until Ctrl-C (or SIGTERM, which the CLI turns into one), then close the socket."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
