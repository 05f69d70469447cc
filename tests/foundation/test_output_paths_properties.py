"""Generated output paths against a tree of bundles, runs, checkpoints, MLflow stores and audio.

The property: ``check_output_file`` lets a command write only a new file or an earlier predict
output, and nothing whose real location is inside a folder esc_sweep keeps state in. The oracle
is the tree itself (which folders were made as what), not the code under test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esc_sweep.errors import EscSweepError
from esc_sweep.outputs import CSV_HEADER, check_output_file, check_output_folder

PROTECTED = ["bundle", "run", "run/bundle", "run/.hydra", "ck/0123456789abcdef", "ck/fedcba9876543210", "mlruns",
             "mlruns/artifacts/1/abc", "store"]
# Folders holding files of the same names one at a time: the user's, not esc_sweep's.
FREE = ["", "work", "audio", "audio/dogs", "deep/er/still", "lookalike", "lookalike2"]
NAMES = ["bundle.json", "model.pt", "results.json", "state.json", "fold_1.json", "mlflow.db", "meta.yaml",
         "clip.wav", "notes.txt", "predictions.csv", "old.json", "old.table", "new.csv", "x.json", "config.yaml",
         ".lock", "new file.txt"]


def _build_tree(root: Path) -> tuple[list[Path], list[Path]]:
    """The tree; returns (protected folders, files that are earlier predict outputs)."""
    for folder in PROTECTED + FREE:
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "bundle" / "bundle.json").write_text('{"format": "esc_sweep-bundle"}')
    (root / "bundle" / "model.pt").write_bytes(b"weights")
    (root / "run" / "results.json").write_text("{}")
    (root / "run" / ".hydra" / "config.yaml").write_text("a: 1")
    (root / "run" / "bundle" / "bundle.json").write_text("{}")
    (root / "run" / "bundle" / "members").mkdir()
    (root / "ck" / "0123456789abcdef" / "state.json").write_text("{}")
    (root / "ck" / "0123456789abcdef" / "fold_1.json").write_text("{}")
    (root / "ck" / "fedcba9876543210" / "state.json").write_text("{}")
    (root / "ck" / "fedcba9876543210" / ".lock").write_text("123")
    (root / "store" / "mlflow.db").write_bytes(b"SQLite format 3\x00")
    for name in ("bundle.json", "results.json", ".lock", "meta.yaml"):
        (root / "lookalike" / name).write_text("{}")
    (root / "lookalike2" / "state.json").write_text("{}")
    sf.write(root / "audio" / "clip.wav", np.zeros(800), 8000)
    sf.write(root / "audio" / "dogs" / "clip.wav", np.zeros(800), 8000)
    (root / "work" / "notes.txt").write_text("the user's own notes")
    (root / "work" / "predictions.csv").write_text(f"{CSV_HEADER}\na.wav,1,dog,0.9\n")
    (root / "work" / "old.json").write_text('{\n  "written_by": "esc-sweep predict",\n  "predictions": []\n}\n')
    (root / "work" / "old.table").write_text("   Predictions (baseline_cnn, 5 classes)\n+---+\n")
    (root / "work" / "x.json").write_text('{"mine": true}')
    (root / "latest").symlink_to(root / "run" / "bundle")  # a user's link to the newest bundle
    (root / "notes-link.txt").symlink_to(root / "work" / "notes.txt")
    os.mkfifo(root / "work" / "pipe")
    protected = [(root / p).resolve() for p in PROTECTED]
    ours = [(root / "work" / n).resolve() for n in ("predictions.csv", "old.json", "old.table")]
    return protected, ours


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs-tree")
    protected, ours = _build_tree(root)
    return root, protected, ours


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


folders = st.sampled_from(PROTECTED + FREE + ["latest", "audio/../bundle", "work/../run/.hydra", "nowhere/new"])
names = st.one_of(st.sampled_from(NAMES + ["pipe", "notes-link.txt"]),
                  st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=12))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(folder=folders, name=names, relative=st.booleans())
def test_a_generated_output_path_is_written_only_where_nothing_of_the_users_is(tree, folder, name, relative,
                                                                                monkeypatch):
    root, protected, ours = tree
    path = root / folder / name
    monkeypatch.chdir(root)
    given_as = os.path.relpath(path, root) if relative else str(path)
    real = Path(os.path.realpath(path))
    inside_protected = any(real == p or p in real.parents for p in protected)
    existing_not_ours = os.path.lexists(real) and real not in ours
    before = _snapshot(root)
    try:
        target = check_output_file(given_as, inputs=[root / "audio" / "clip.wav"])
    except EscSweepError as err:
        message = str(err)
        assert "\n" not in message and given_as in message
        assert inside_protected or existing_not_ours or real == (root / "audio" / "clip.wav").resolve(), message
    else:
        assert not inside_protected, f"{given_as} lies in a protected folder but was allowed"
        assert not existing_not_ours, f"{given_as} is a file of the user's but was allowed"
        assert Path(os.path.realpath(target)) == real
    assert _snapshot(root) == before, "checking a path changed a file"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(folder=folders)
def test_a_generated_plots_folder_is_never_a_folder_esc_sweep_keeps_state_in(tree, folder):
    root, protected, _ = tree
    real = Path(os.path.realpath(root / folder))
    inside_protected = any(real == p or p in real.parents for p in protected)
    try:
        check_output_folder(str(root / folder))
    except EscSweepError as err:
        assert inside_protected or (real.exists() and not real.is_dir()), str(err)
    else:
        assert not inside_protected


def test_a_fifo_as_output_is_named_as_such(tree):
    root, _, _ = tree
    with pytest.raises(EscSweepError, match="is a FIFO"):
        check_output_file(str(root / "work" / "pipe"))
