"""Download, resume, checksum and safe extraction, against a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import stat
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from esc_sweep.config import DatasetConfig
from esc_sweep.data import load_clipset
from esc_sweep.data.download import download_file, ensure_esc50, find_dataset_root, safe_extract
from esc_sweep.errors import DownloadError


class Server:
    """Serves in-memory files on 127.0.0.1 with HTTP Range support and a few failure modes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.ignore_range = False
        self.cut_after: int | None = None  # close the connection after this many body bytes
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, status = 0, 200
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not server.ignore_range:
                    start = int(m.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                chunk = body[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(chunk)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(chunk[: server.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def payload(n: int = 300_000) -> bytes:
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


def esc50_zip() -> bytes:
    """A tiny ESC-50-layout archive wrapped in ESC-50-master/ like the upstream zip."""
    buf = io.BytesIO()
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    with zipfile.ZipFile(buf, "w") as zf:
        for target, name in ((0, "dog"), (1, "rooster")):
            for fold in range(1, 6):
                stem = f"{fold}-{100 + target}{fold}-A-{target}"
                wav = io.BytesIO()
                t = np.arange(2000) / 8000
                sf.write(wav, (0.3 * np.sin(2 * np.pi * (300 + 300 * target) * t)).astype(np.float32), 8000, format="WAV")
                zf.writestr(f"ESC-50-master/audio/{stem}.wav", wav.getvalue())
                lines.append(f"{stem}.wav,{fold},{target},{name},True,{100 + target}{fold},A")
        zf.writestr("ESC-50-master/meta/esc50.csv", "\n".join(lines) + "\n")
        zf.writestr("ESC-50-master/README.md", "tiny")
    return buf.getvalue()


# --------------------------------------------------------------------------
# download_file


def test_plain_download(server, tmp_path):
    data = payload()
    server.files["/a.bin"] = data
    dest = download_file(server.url("/a.bin"), tmp_path / "a.bin", progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/a.bin", None)]
    assert not (tmp_path / "a.bin.part").exists()
    # Already there: no second request.
    download_file(server.url("/a.bin"), tmp_path / "a.bin", progress=False)
    assert len(server.requests) == 1


def test_resume_from_partial_file(server, tmp_path):
    data = payload()
    server.files["/a.bin"] = data
    part = tmp_path / "a.bin.part"
    part.write_bytes(data[:123_456])
    dest = download_file(server.url("/a.bin"), tmp_path / "a.bin", sha256=hashlib.sha256(data).hexdigest(), progress=True)
    assert dest.read_bytes() == data
    assert server.requests == [("/a.bin", "bytes=123456-")]
    assert not part.exists()


def test_interrupted_download_resumes_on_the_next_call(server, tmp_path):
    data = payload()
    server.files["/a.bin"] = data
    server.cut_after = 100_000
    with pytest.raises(DownloadError, match=r"rerun to resume from .*a\.bin\.part"):
        download_file(server.url("/a.bin"), tmp_path / "a.bin", progress=False)
    part = tmp_path / "a.bin.part"
    assert part.stat().st_size == 100_000 and not (tmp_path / "a.bin").exists()
    server.cut_after = None
    download_file(server.url("/a.bin"), tmp_path / "a.bin", progress=False)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert server.requests[-1] == ("/a.bin", "bytes=100000-")


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = payload()
    server.files["/a.bin"] = data
    server.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(b"x" * 5000)  # stale bytes must not survive
    download_file(server.url("/a.bin"), tmp_path / "a.bin", progress=False)
    assert (tmp_path / "a.bin").read_bytes() == data


def test_complete_part_file_is_finished_without_refetching(server, tmp_path):
    data = payload(50_000)
    server.files["/a.bin"] = data
    (tmp_path / "a.bin.part").write_bytes(data)
    download_file(server.url("/a.bin"), tmp_path / "a.bin", progress=False)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert server.requests == [("/a.bin", "bytes=50000-")]  # answered 416: already complete


def test_wrong_checksum_deletes_the_file(server, tmp_path):
    data = payload()
    server.files["/a.bin"] = data
    wrong = "0" * 64
    actual = hashlib.sha256(data).hexdigest()
    with pytest.raises(DownloadError) as info:
        download_file(server.url("/a.bin"), tmp_path / "a.bin", sha256=wrong, progress=False)
    msg = str(info.value)
    assert f"expected sha256 {wrong}, got {actual}" in msg and "a.bin" in msg and "deleted" in msg
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()
    with pytest.raises(DownloadError, match=r"not a sha256 hex digest"):
        download_file(server.url("/a.bin"), tmp_path / "a.bin", sha256="abc", progress=False)


def test_http_errors_name_the_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"download of http://127\.0\.0\.1:\d+/missing\.zip failed: HTTP 404"):
        download_file(server.url("/missing.zip"), tmp_path / "m.zip", progress=False)
    port = server.httpd.server_address[1]
    server.close()
    with pytest.raises(DownloadError, match=rf"cannot download http://127\.0\.0\.1:{port}/x"):
        download_file(f"http://127.0.0.1:{port}/x", tmp_path / "x", progress=False, timeout=5)
    server.close = lambda: None  # already closed


# --------------------------------------------------------------------------
# safe_extract


def make_zip(path: Path, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_safe_extract_writes_files(tmp_path):
    archive = make_zip(tmp_path / "ok.zip", {"top/a.txt": b"A", "top/sub/b.txt": b"B"})
    out = tmp_path / "out"
    written = safe_extract(archive, out)
    assert (out / "top" / "a.txt").read_bytes() == b"A" and (out / "top" / "sub" / "b.txt").read_bytes() == b"B"
    assert len(written) == 2


@pytest.mark.parametrize(
    "entry",
    ["../evil.txt", "top/../../evil.txt", "/tmp/esc_sweep_abs_evil.txt", "..\\evil.txt", "C:/evil.txt"],
)
def test_safe_extract_refuses_paths_outside_the_target(tmp_path, entry):
    archive = make_zip(tmp_path / "bad.zip", {"top/fine.txt": b"ok", entry: b"pwned"})
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match=r"refusing to extract .*bad\.zip: entry"):
        safe_extract(archive, out)
    assert not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/esc_sweep_abs_evil.txt").exists()
    assert not (out / "top" / "fine.txt").exists()  # checked before anything is written


def test_safe_extract_refuses_symlinks(tmp_path):
    archive = make_zip(tmp_path / "link.zip", {"top/a.txt": b"A"}, symlink="top/passwd")
    with pytest.raises(DownloadError, match=r"entry 'top/passwd' is a symbolic link"):
        safe_extract(archive, tmp_path / "out")


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DownloadError, match=r"bad\.zip is corrupt or not a zip"):
        safe_extract(bad, tmp_path / "out")


def test_find_dataset_root(tmp_path):
    (tmp_path / "x" / "ESC-50-master" / "meta").mkdir(parents=True)
    (tmp_path / "x" / "ESC-50-master" / "meta" / "esc50.csv").write_text("filename\n")
    assert find_dataset_root(tmp_path / "x") == tmp_path / "x" / "ESC-50-master"
    (tmp_path / "y").mkdir()
    with pytest.raises(DownloadError, match=r"has no meta/esc50.csv"):
        find_dataset_root(tmp_path / "y")


# --------------------------------------------------------------------------
# End to end: load_clipset with download=true


def test_esc50_download_extract_and_load(server, tmp_path, monkeypatch):
    archive = esc50_zip()
    server.files["/ESC-50-master.zip"] = archive
    monkeypatch.delenv("ESC50_ROOT", raising=False)
    cfg = DatasetConfig(
        url=server.url("/ESC-50-master.zip"),
        archive_sha256=hashlib.sha256(archive).hexdigest(),
        download_dir=str(tmp_path / "dl"),
        cache_dir=str(tmp_path / "cache"),
        clip_seconds=0.25,
    )
    root = ensure_esc50(cfg, progress=False)
    assert root.name == "ESC-50-master" and (root / "meta" / "esc50.csv").is_file()
    assert root.is_relative_to(tmp_path / "dl")
    assert not list((tmp_path / "dl").glob("*.zip*"))  # archive removed after extraction

    clips = load_clipset(cfg, 8000, progress=False)
    assert clips.waveforms.shape == (10, 2000) and clips.class_names == ["dog", "rooster"]
    assert len(server.requests) == 1  # second resolution reused the extracted copy


def test_esc50_download_with_wrong_checksum(server, tmp_path, monkeypatch):
    server.files["/ESC-50-master.zip"] = esc50_zip()
    monkeypatch.delenv("ESC50_ROOT", raising=False)
    cfg = DatasetConfig(url=server.url("/ESC-50-master.zip"), archive_sha256="ab" * 32, download_dir=str(tmp_path / "dl"))
    with pytest.raises(DownloadError, match=r"checksum mismatch .*expected sha256 abab"):
        load_clipset(cfg, 8000, progress=False)
    assert not [p for p in (tmp_path / "dl").iterdir() if p.is_file()]


def test_esc50_download_of_archive_with_traversal(server, tmp_path, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ESC-50-master/meta/esc50.csv", "filename\n")
        zf.writestr("../evil.txt", "pwned")
    server.files["/evil.zip"] = buf.getvalue()
    monkeypatch.delenv("ESC50_ROOT", raising=False)
    cfg = DatasetConfig(url=server.url("/evil.zip"), download_dir=str(tmp_path / "dl"))
    with pytest.raises(DownloadError, match=r"'\.\./evil\.txt' would be written outside"):
        load_clipset(cfg, 8000, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "dl" / "evil.txt").exists()
    assert not [p for p in (tmp_path / "dl").iterdir() if p.is_dir()]  # temporary folder cleaned up
