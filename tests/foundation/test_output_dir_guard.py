"""hydra.run.dir / hydra.sweep.dir named on the command line never land on what esc_sweep keeps:
generated paths against a tree of a bundle, a finished run, an interrupted run, a checkpoint
folder and an MLflow store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esc_sweep.cli import check_output_dir
from esc_sweep.errors import ConfigError

# Folder -> whether writing a run there (or below it) must be refused.
TREE = {"bundle": True, "finished_run": True, "checkpoints": True, "mlruns": True, "interrupted_run": False,
        "plain": False}


def make_tree(root: Path) -> None:
    (root / "bundle").mkdir()
    (root / "bundle" / "bundle.json").write_text("{}")
    (root / "bundle" / "model.pt").write_bytes(b"")
    (root / "finished_run" / ".hydra").mkdir(parents=True)
    (root / "finished_run" / "results.json").write_text("{}")
    (root / "interrupted_run" / ".hydra").mkdir(parents=True)
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "fold_1.json").write_text("{}")
    (root / "mlruns").mkdir()
    (root / "mlruns" / "mlflow.db").write_bytes(b"")
    (root / "plain").mkdir()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(top=st.sampled_from(sorted(TREE)), below=st.lists(st.sampled_from(["a", "b", "..", "."]), max_size=3),
       key=st.sampled_from(["hydra.run.dir", "hydra.sweep.dir"]))
def test_a_generated_output_dir_is_refused_exactly_when_it_lands_on_kept_state(tmp_path, top, below, key):
    if not (tmp_path / "bundle").exists():
        make_tree(tmp_path)
    path = tmp_path.joinpath(top, *below)
    resolved = path.resolve()
    # Where the path really ends up (".." can climb out of the folder it started in).
    landing = next((name for name in TREE if resolved == tmp_path / name or (tmp_path / name) in resolved.parents),
                   None)
    inside_interrupted = landing == "interrupted_run" and resolved != tmp_path / "interrupted_run"
    try:
        check_output_dir(key, str(path))
        refused = None
    except ConfigError as err:
        refused = str(err)
    # An interrupted run's own folder may be named again (to resume it); anything inside a run's folder may not.
    expected = landing is not None and (TREE[landing] or inside_interrupted)
    assert (refused is not None) == expected, (path, resolved, refused)
    if refused:
        assert refused.startswith(f"{key}={path}") and "\n" not in refused


def test_the_cli_refuses_a_finished_runs_folder_before_training(tmp_path):
    make_tree(tmp_path)
    out = subprocess.run([sys.executable, "-m", "esc_sweep", "dataset=synthetic", "hydra.run.dir=finished_run"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert (out.stdout + out.stderr).strip() == (
        f"error: hydra.run.dir=finished_run: {tmp_path / 'finished_run'} holds a finished run (results.json): "
        "name a new folder")
    assert (tmp_path / "finished_run" / "results.json").read_text() == "{}"
