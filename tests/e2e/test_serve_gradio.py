"""``esc-sweep serve``: the Gradio app through its HTTP API (``gradio_client``), as scripts use it.

The server is the real command in a subprocess, serving the session's synthetic bundle twice (as a
folder and as its MLflow run id: two columns side by side). With ``ESC50_ROOT``, a bundle trained on
five real ESC-50 classes tags real clips through the same API. The live microphone path is its
streaming function fed a recording in half-second chunks, as the browser sends them.
"""

from __future__ import annotations

import csv
import json
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from esc_sweep.app.serve import INSTALL_HINT
from tests.conftest import run_cli
from tests.e2e.serve_support import REAL_CLASSES, real_clip, serve, trained_real_bundle
from tests.synthetic_bundle import NUM_CLASSES, stereo, synthetic_clips, trained_synthetic_run, write_synthetic_clips

pytest.importorskip("gradio_client", reason="the app extra is not installed: pip install 'esc_sweep[app]'")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_synthetic_run(tmp_path_factory)


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """Two columns: the bundle folder and the same bundle by run id; uploads limited to 1 MiB."""
    with serve([str(trained.bundle_dir), trained.run_id, "--tracking-uri", trained.tracking_uri,
                "--max-upload-mb", "1"], tmp_path_factory.mktemp("serve")) as served:
        yield served


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


def confidences(label_output: dict) -> list[tuple[str, float]]:
    """``gr.Label`` as the API returns it: ``[(label, probability)]``, most likely first."""
    return [(item["label"], item["confidence"]) for item in label_output["confidences"]]


def test_startup_names_each_model_and_binds_localhost(server, trained):
    assert server.url.startswith("http://127.0.0.1:")
    described = [line for line in server.stdout if line.startswith("esc-sweep serve: ")]
    assert len(described) == 2 and all("baseline_cnn, 5 classes" in line for line in described)
    assert trained.run_id in described[1]


def test_classify_gives_every_model_its_top5_and_a_timeline(client, tmp_path):
    from gradio_client import handle_file

    path, label = write_synthetic_clips(tmp_path, per_class=1, seed=2024)[3]
    summary, first, second, plot_first, plot_second = client.predict(handle_file(str(path)), api_name="/classify")
    assert summary.startswith(f"**{path.name}**: 0.5 s, 1 window")
    top = confidences(first)
    assert first["label"] == top[0][0] == label == "class_3"
    assert len(top) == NUM_CLASSES  # top 5 of 5 classes: all of them
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert sum(p for _, p in top) == pytest.approx(1.0, abs=1e-4)
    assert dict(confidences(second)) == pytest.approx(dict(top))  # the same bundle by run id: the same numbers
    for plot in (plot_first, plot_second):
        assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/png;base64,")
        assert len(plot["plot"]) > 20_000  # a real picture, not an empty canvas


def test_a_long_stereo_recording_is_tagged_window_by_window(client, trained, tmp_path):
    """Five different tones in a row at 44.1 kHz stereo: the whole-file answer is `predict`'s."""
    from gradio_client import handle_file

    waveforms, targets = synthetic_clips(per_class=1, seed=5, sample_rate=44100)
    path = tmp_path / "five tones.flac"
    sf.write(path, stereo(np.concatenate(list(waveforms))), 44100)
    summary, first, *_ = client.predict(handle_file(str(path)), api_name="/classify")
    assert summary.startswith(f"**{path.name}**: 2.5 s, 5 windows of 0.5 s")

    out = run_cli(["predict", str(trained.bundle_dir), str(path), "--format", "json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    predicted = {item["label"]: item["probability"] for item in json.loads(out.stdout)["predictions"][0]["top"]}
    assert dict(confidences(first)) == pytest.approx(predicted, abs=1e-5)


def test_batch_gives_a_table_and_the_same_csv_and_reports_an_unreadable_file(client, tmp_path):
    from gradio_client import handle_file

    files = write_synthetic_clips(tmp_path, per_class=2, seed=77)
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio at all")
    table, csv_path = client.predict([handle_file(str(p)) for p, _ in files] + [handle_file(str(broken))],
                                     api_name="/batch")
    header, rows = table["headers"], table["data"]
    assert header[0:2] == ["file", "seconds"] and header[-1] == "error"
    assert len(header) == 2 + 2 * 2 + 1  # label and probability for each of the two columns
    assert len(rows) == len(files) + 1
    by_name = {row[0]: row for row in rows}
    correct = sum(by_name[p.name][2] == label for p, label in files)
    assert correct >= len(files) - 2, rows
    for p, _ in files:
        row = by_name[p.name]
        assert row[1] == pytest.approx(0.5) and 0 < row[3] <= 1 and row[2] == row[4] and row[5] == row[3]
        assert row[-1] == ""
    assert by_name["broken.wav"][2] == "" and "cannot decode audio file broken.wav" in by_name["broken.wav"][-1]

    with open(csv_path, newline="") as f:
        written = list(csv.reader(f))
    assert written[0] == header
    assert [row[0] for row in written[1:]] == [row[0] for row in rows]
    assert [row[2] for row in written[1:]] == [row[2] for row in rows]


def test_bad_uploads_are_refused_with_one_line_and_the_server_goes_on(client, server, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    notes = tmp_path / "notes.wav"
    notes.write_text("definitely not audio")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    # An hour of silence packs into a small FLAC: refused from its header, before any decoding.
    hour = tmp_path / "hour.flac"
    with sf.SoundFile(hour, "w", samplerate=8000, channels=1, format="FLAC") as out:
        block = np.zeros(8000 * 60, dtype="int16")
        for _ in range(60):
            out.write(block)
    assert hour.stat().st_size < 1_000_000
    for path, message in ((notes, "cannot decode audio file notes.wav"), (empty, "audio file empty.wav is empty"),
                          (hour, "audio file hour.flac lasts 3600.0 s, over the 600 s limit")):
        started = time.monotonic()
        with pytest.raises(AppError) as refused:
            client.predict(handle_file(str(path)), api_name="/classify")
        assert message in str(refused.value) and "\n" not in str(refused.value)
        assert "/tmp" not in str(refused.value)  # the user's file name, not the server's copy
        assert time.monotonic() - started < 30

    # Over --max-upload-mb 1: the client refuses before sending, and so does the server's upload route.
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (2 * 2**20))
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
        client.predict(handle_file(str(big)), api_name="/classify")
    status, answer = post_upload(server.url, "big.wav", big.read_bytes())
    assert status == 413 and "1048576" in answer, answer

    path, label = write_synthetic_clips(tmp_path / "ok", per_class=1, seed=31)[1]
    assert client.predict(handle_file(str(path)), api_name="/classify")[1]["label"] == label  # still serving

    # The server's console: one line per refusal, no traceback.
    console = server.log.read_text()
    assert "Traceback" not in console, console[-3000:]
    for name in ("notes.wav", "empty.wav", "hour.flac"):
        lines = [line for line in console.splitlines() if f"refused {name}:" in line]
        assert len(lines) == 1 and lines[0].startswith("esc-sweep serve: refused"), console[-3000:]


def test_api_outputs_are_named_for_what_they_are(client):
    # The module's server serves two bundles side by side: each output says which model it belongs to.
    returns = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/classify"]["returns"]
    assert [r["label"] for r in returns] == ["summary", "top-5 labels, model 1", "top-5 labels, model 2",
                                             "spectrogram and per-window predictions, model 1",
                                             "spectrogram and per-window predictions, model 2"]
    batch = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/batch"]["returns"]
    assert [r["label"] for r in batch] == ["predictions", "predictions CSV"]


def post_upload(url: str, name: str, data: bytes) -> tuple[int, str]:
    """A raw multipart POST to Gradio's upload route (what the page does before calling a function)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_twenty_concurrent_clients_are_queued_and_all_answered(server, tmp_path):
    from gradio_client import Client, handle_file

    files = write_synthetic_clips(tmp_path, per_class=4, seed=78)[:20]

    def classify(item):
        path, _ = item
        return Client(server.url, verbose=False).predict(handle_file(str(path)), api_name="/classify")[1]["label"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        labels = list(pool.map(classify, files))
    assert len(labels) == 20 and all(label.startswith("class_") for label in labels)
    assert sum(got == want for got, (_, want) in zip(labels, files)) >= 16


# --------------------------------------------------------------------------
# Live microphone: the streaming function fed a recording chunk by chunk


def feed_in_chunks(bundles, recording: np.ndarray, sample_rate: int, chunk_seconds: float = 0.5):
    """What ``.stream`` does with a browser's microphone: int16 chunks in, labels out after each."""
    from esc_sweep.app.tagging import live_step

    pcm = np.clip(recording * 32767, -32768, 32767).astype(np.int16)
    step = int(chunk_seconds * sample_rate)
    stream, answers = None, []
    for start in range(0, pcm.shape[0], step):
        labels, stream, milliseconds = live_step(bundles, stream, sample_rate, pcm[start:start + step])
        answers.append((start / sample_rate, labels, milliseconds))
    return answers, stream


def test_live_tagging_follows_a_recording_that_changes_sound(trained):
    """Two seconds of one tone, then two of another, at a microphone's 48 kHz in stereo: the sliding
    window (the last 0.5 s) names the first, then the second."""
    from esc_sweep.bundle import load_bundle

    bundle = load_bundle(trained.bundle_dir)
    waveforms, targets = synthetic_clips(per_class=4, seed=11, sample_rate=48000)
    first = np.concatenate([w for w, t in zip(waveforms, targets) if t == 1])
    second = np.concatenate([w for w, t in zip(waveforms, targets) if t == 4])
    answers, stream = feed_in_chunks([bundle, bundle], stereo(np.concatenate([first, second])), 48000, 0.25)
    assert len(answers) == 16 and stream.chunks == 16
    assert stream.samples.shape[0] == 24000  # the ring buffer: 0.5 s at the microphone's rate
    tops = [next(iter(labels[0])) for _, labels, _ in answers]
    assert tops[1:8].count("class_1") >= 6, tops  # a full window of the first tone
    assert tops[9:16].count("class_4") >= 6, tops  # of the second
    assert all(labels[0] == labels[1] for _, labels, _ in answers)  # both columns hear the same window
    assert all(len(labels[0]) == NUM_CLASSES for _, labels, _ in answers)
    assert all(ms > 0 for _, _, ms in answers) and len(stream.latencies_ms) == 16


# --------------------------------------------------------------------------
# Real ESC-50 clips


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory, esc50_root):
    return trained_real_bundle(tmp_path_factory, esc50_root)


def test_real_clips_through_the_api_and_through_the_live_stream(real_bundle, esc50_root, tmp_path_factory):
    from gradio_client import Client, handle_file

    from esc_sweep.bundle import load_bundle

    with serve([str(real_bundle)], tmp_path_factory.mktemp("serve-real")) as served:
        client = Client(served.url, verbose=False)
        rooster = real_clip(esc50_root, "rooster")
        summary, label, plot = client.predict(handle_file(str(rooster)), api_name="/classify")
        assert summary.startswith(f"**{rooster.name}**: 5.0 s, 1 window of 5 s")
        assert label["label"] == "rooster", label
        assert {item["label"] for item in label["confidences"]} == set(REAL_CLASSES)

        table, _ = client.predict([handle_file(str(real_clip(esc50_root, c))) for c in REAL_CLASSES],
                                  api_name="/batch")
        got = {row[0]: row[2] for row in table["data"]}
        correct = sum(got[real_clip(esc50_root, c).name] == c for c in REAL_CLASSES)
        assert correct >= 4, got

    # The microphone path: the real clip at a browser's 48 kHz, half a second at a time.
    from esc_sweep.data.audio import read_audio, resample

    bundle = load_bundle(real_bundle)
    data, rate = read_audio(rooster)
    recording = resample(torch.from_numpy(data[:, 0].copy()), rate, 48000).numpy()
    answers, stream = feed_in_chunks([bundle], recording, 48000)
    assert len(answers) == 10 and stream.heard_seconds() == pytest.approx(5.0)
    assert next(iter(answers[-1][1][0])) == "rooster", answers[-1][1]
    assert all(set(labels[0]) <= set(REAL_CLASSES) for _, labels, _ in answers)


# --------------------------------------------------------------------------
# The command line around the app


def test_without_gradio_one_line_says_how_to_install_it(trained, tmp_path):
    hidden = tmp_path / "no-gradio"
    (hidden / "gradio").mkdir(parents=True)
    (hidden / "gradio" / "__init__.py").write_text("raise ImportError('No module named gradio')\n")
    out = run_cli(["serve", str(trained.bundle_dir)], cwd=tmp_path, env={"PYTHONPATH": str(hidden)})
    assert out.returncode == 2
    assert out.stderr.strip() == INSTALL_HINT and "-c constraints.txt" in INSTALL_HINT


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port 70000: must be between 0 and 65535"),
    (["--concurrency", "0"], "--concurrency 0: must be at least 1"),
    (["--max-upload-mb", "0"], "--max-upload-mb 0.0: must be > 0"),
    (["--examples", "no-such-folder"], "--examples no-such-folder: not a folder"),
])
def test_bad_options_stop_with_one_line(trained, tmp_path, args, message):
    out = run_cli(["serve", str(trained.bundle_dir), *args], cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stdout + out.stderr
