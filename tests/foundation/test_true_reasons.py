"""Errors give the true reason: a FIFO or device is named as such (and never opened), a damaged
checkpoint or cached download is called damaged and says which file to delete (or is fetched again)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import pytest
import torch

from esc_sweep.bundle import load_bundle
from esc_sweep.config import FolderDatasetConfig
from esc_sweep.data import load_clipset
from esc_sweep.data.download import ensure_esc50
from esc_sweep.data.esc50 import load_esc50
from esc_sweep.errors import BundleError, ConfigError, DataError, EscSweepError, TrackingError
from esc_sweep.models.weights import cache_path, read_checkpoint, resolve_weights
from esc_sweep.tracking.uri import check_store, check_store_readable
from esc_sweep.training.checkpoint import FoldCheckpoints
from tests.models.test_weights import PAYLOAD, _Handler, server  # noqa: F401 - the fixture


def _in_time(call, seconds: float = 20.0):
    """Run ``call``; fail (instead of hanging the suite) if it blocks, as opening a FIFO would."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for {seconds} s (a FIFO was opened?)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("where", ["dataset.root", "dataset.csv", "bundle", "MLflow store (training)",
                                   "MLflow store (reading)"])
def test_a_fifo_is_named_as_such_and_never_opened(tmp_path, fifo, where):
    if where == "dataset.root":
        call, error = lambda: load_clipset(FolderDatasetConfig(root=str(fifo)), 8000, progress=False), DataError
    elif where == "dataset.csv":
        (tmp_path / "sounds").mkdir()
        cfg = FolderDatasetConfig(root=str(tmp_path / "sounds"), csv=str(fifo))
        call, error = lambda: load_clipset(cfg, 8000, progress=False), DataError
    elif where == "bundle":
        call, error = lambda: load_bundle(fifo), BundleError
    elif where == "MLflow store (training)":
        call, error = lambda: check_store(f"sqlite:///{fifo}"), TrackingError
    else:
        call, error = lambda: check_store_readable(f"sqlite:///{fifo}"), TrackingError
    with pytest.raises(error) as refused:
        _in_time(call)
    assert f"{fifo} is a FIFO / named pipe" in str(refused.value), str(refused.value)


def test_a_device_file_is_named_as_such(tmp_path):
    with pytest.raises(DataError, match="/dev/null is a device, not a CSV file"):
        (tmp_path / "sounds").mkdir()
        load_clipset(FolderDatasetConfig(root=str(tmp_path / "sounds"), csv="/dev/null"), 8000, progress=False)


def test_a_damaged_saved_fold_state_is_called_damaged_without_torchs_advice(tmp_path, caplog):
    checkpoints = FoldCheckpoints(tmp_path)
    progress = checkpoints.progress(1)
    progress.save({"epoch": 1, "weights": torch.zeros(1000)})
    progress.path.write_bytes(progress.path.read_bytes()[:700])
    with caplog.at_level(logging.WARNING):
        assert progress.load() is None
    assert "is unreadable (damaged: truncated or not a torch file)" in caplog.text
    assert "weights_only" not in caplog.text
    progress.path.write_bytes(b"\x80\x04not a torch zip")  # a pickle-looking file
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert progress.load() is None
    assert "damaged" in caplog.text and "weights_only" not in caplog.text


def test_a_cached_download_that_no_longer_matches_its_checksum_is_fetched_again(server):  # noqa: F811
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    path = resolve_weights(server, sha256=sha, progress=False)
    path.write_bytes(PAYLOAD[:1000])  # damaged on disk after the verified download
    again = resolve_weights(server, sha256=sha, progress=False)
    assert again == path and again.read_bytes() == PAYLOAD
    assert _Handler.ranges == [None, None]  # downloaded a second time, whole


def test_a_damaged_cached_download_without_a_checksum_names_the_file_to_delete(server):  # noqa: F811
    path = resolve_weights(server, progress=False)  # PAYLOAD is no checkpoint: as good as damaged
    with pytest.raises(ConfigError) as refused:
        read_checkpoint(path)
    assert f"the cached download {cache_path(server)} is damaged" in str(refused.value)
    assert "delete it and run again" in str(refused.value)


def test_a_damaged_downloaded_esc50_copy_names_the_folder_to_delete(tmp_path, monkeypatch):
    from tests.data.test_download import esc50_zip  # the archive the download tests serve

    monkeypatch.delenv("ESC50_ROOT", raising=False)
    archive = tmp_path / "esc50.zip"
    archive.write_bytes(esc50_zip())
    cfg = {"root": None, "download": True, "url": archive.as_uri(), "download_dir": str(tmp_path / "dl"),
           "cache_dir": str(tmp_path / "cache"), "clip_seconds": 0.25}
    root = ensure_esc50(cfg, progress=False)
    victim = next((root / "audio").glob("*.wav"))
    victim.write_bytes(victim.read_bytes()[:60])  # damaged since the download
    with pytest.raises(EscSweepError) as refused:
        load_esc50(cfg, 8000, progress=False)
    message = str(refused.value)
    assert victim.name in message and "\n" not in message
    extracted = tmp_path / "dl" / root.relative_to(tmp_path / "dl").parts[0]  # dl/esc50-<key>
    assert f"this ESC-50 copy was downloaded into {extracted}: delete that folder" in message, message
