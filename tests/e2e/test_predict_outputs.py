"""``esc-sweep predict --output`` through the real command line: only a new file or its own earlier output.

The named case of issue 26: ``--output B/bundle.json`` replaced the bundle's description with
predictions. Now it, a user's file and a FIFO are refused in one line (exit 2) and left as
they were, while an earlier predict output is replaced.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import run_cli
from tests.synthetic_bundle import trained_synthetic_run, write_synthetic_clips


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_synthetic_run(tmp_path_factory)


def _predict(args, cwd):
    return run_cli(["predict", *args], cwd=cwd, timeout=300)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_output_over_the_bundles_own_files_or_a_users_file_is_refused_and_nothing_changes(trained, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(trained.bundle_dir, bundle)
    (clip, _), = write_synthetic_clips(tmp_path / "clips", per_class=1, seed=4)[:1]
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    cases = {
        str(bundle / "bundle.json"): f"lies inside {bundle}, a model bundle",
        str(bundle / "new.json"): f"lies inside {bundle}, a model bundle",
        str(trained.output_dir / "predictions.json"): f"lies inside {trained.output_dir}, a run's output folder",
        str(notes): "already exists and was not written by esc-sweep predict",
        str(fifo): "is a FIFO / named pipe",
    }
    before = {p: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    for output, said in cases.items():
        out = _predict([str(bundle), str(clip), "--format", "json", "--output", output], cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert said in _one_line(out.stderr), (output, out.stderr[-2000:])
    assert {p: p.read_bytes() for p in bundle.iterdir() if p.is_file()} == before
    assert notes.read_text() == '{"mine": true}' and not (trained.output_dir / "predictions.json").exists()
    out = _predict([str(bundle), str(clip)], cwd=tmp_path)  # the bundle still loads and predicts
    assert out.returncode == 0, out.stderr[-3000:]


def test_an_earlier_predict_output_is_replaced_in_any_format(trained, tmp_path):
    (clip, _), = write_synthetic_clips(tmp_path / "clips", per_class=1, seed=5)[:1]
    target = tmp_path / "predictions.out"
    for fmt in ("csv", "json", "table", "json"):
        out = _predict([str(trained.bundle_dir), str(clip), "--format", fmt, "--output", str(target)], cwd=tmp_path)
        assert out.returncode == 0, (fmt, out.stderr[-3000:])
    assert json.loads(target.read_text())["written_by"] == "esc-sweep predict"


def test_a_fifo_given_as_input_is_named_as_such(trained, tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    out = _predict([str(trained.bundle_dir), str(fifo)], cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "is a FIFO / named pipe" in _one_line(out.stderr), out.stderr[-2000:]
