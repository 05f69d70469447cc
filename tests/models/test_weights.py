"""``model.weights`` sources, against a local HTTP server that the test runs (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading

import pytest
import torch

from esc_sweep.errors import ConfigError, DownloadError
from esc_sweep.models.weights import cache_path, read_checkpoint, resolve_weights

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /weights.pth with HTTP Range support; records the Range headers it saw."""

    ranges: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path != "/weights.pth":
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        type(self).ranges.append(requested)
        start = int(requested.split("=")[1].rstrip("-")) if requested else 0
        body = PAYLOAD[start:]
        self.send_response(206 if requested else 200)
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("ESC_SWEEP_WEIGHTS", str(tmp_path / "cache"))
    _Handler.ranges = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/weights.pth"
    httpd.shutdown()
    httpd.server_close()


def test_downloads_once_into_the_weights_cache(server, tmp_path):
    path = resolve_weights(server, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert path.parent == tmp_path / "cache"
    assert resolve_weights(server, progress=False) == path  # cached: no second request
    assert _Handler.ranges == [None]


def test_resumes_a_partial_download_with_a_range_request(server):
    part = cache_path(server).with_name(cache_path(server).name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:300_000])  # an interrupted earlier run
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    path = resolve_weights(server, sha256=sha, progress=False)
    assert _Handler.ranges == ["bytes=300000-"]
    assert path.read_bytes() == PAYLOAD and not part.exists()


def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(server):
    with pytest.raises(DownloadError, match="checksum mismatch.*model.weights_sha256") as err:
        resolve_weights(server, sha256="0" * 64, progress=False)
    assert "\n" not in str(err.value)
    assert not cache_path(server).exists()


def test_offline_is_one_line_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("ESC_SWEEP_WEIGHTS", str(tmp_path / "cache"))
    with socket.socket() as sock:  # a port nobody listens on: what an offline machine sees
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError) as err:
        resolve_weights(f"http://127.0.0.1:{port}/Cnn14.pth", progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model.weights: cannot download") and "model.weights=<local file>" in message


def test_a_local_file_with_the_wrong_checksum_is_refused_but_kept(tmp_path):
    mine = tmp_path / "mine.pth"
    torch.save({"model": {"w": torch.ones(2)}}, mine)
    with pytest.raises(ConfigError, match="model.weights_sha256"):
        resolve_weights(str(mine), sha256="f" * 64)
    assert mine.exists()  # never delete what the user made
    assert resolve_weights(str(mine), sha256=hashlib.sha256(mine.read_bytes()).hexdigest()) == mine


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ConfigError, match="panns:cnn14"):
        resolve_weights("panns:cnn99")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_weights("/nowhere/at/all.pth")


def test_checkpoints_are_unwrapped(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module.fc.weight": torch.ones(1)}, "epoch": 3}, path)
    assert list(read_checkpoint(path)) == ["fc.weight"]
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")
