"""``esc-sweep plots`` and the plots a final fit writes and logs to MLflow."""

from __future__ import annotations

import shutil

import matplotlib.image
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from esc_sweep.app import plots
from esc_sweep.errors import EscSweepError
from tests.conftest import run_cli
from tests.synthetic_bundle import NUM_CLASSES, trained_synthetic_run

ALL_PLOTS = {
    "waveforms.png",
    "spectrograms.png",
    "sample_predictions.png",
    "per_class_accuracy.png",
    "confusion_matrix.png",
    "learning_curves.png",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_synthetic_run(tmp_path_factory)


def image_size(path) -> tuple[int, int]:
    """(height, width) in pixels; fails unless the file is a readable PNG."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return matplotlib.image.imread(path).shape[:2]


def test_final_fit_writes_plots_and_logs_them_to_its_run(trained):
    folder = trained.output_dir / "plots"
    assert {p.name for p in folder.iterdir()} == ALL_PLOTS
    # Grids: one row per class (5 synthetic classes), 3 clips each, 100 dpi.
    assert image_size(folder / "waveforms.png") == (round(100 * (1.6 * NUM_CLASSES + 0.6)), 3 * 320)
    assert image_size(folder / "sample_predictions.png")[0] == round(100 * (1.9 * NUM_CLASSES + 0.6))
    logged = {a.path for a in MlflowClient(trained.tracking_uri).list_artifacts(trained.run_id, "plots")}
    assert logged == {f"plots/{name}" for name in ALL_PLOTS}


def test_plots_command_on_a_results_folder(trained, tmp_path):
    out = run_cli(
        ["plots", str(trained.output_dir), "--out", str(tmp_path / "pics"), "--classes", "2", "--clips-per-class", "1"],
        cwd=tmp_path, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert {p.name for p in (tmp_path / "pics").iterdir()} == ALL_PLOTS
    # The options shape the grids: 2 classes x 1 clip.
    assert image_size(tmp_path / "pics" / "waveforms.png") == (round(100 * (1.6 * 2 + 0.6)), 320)
    assert image_size(tmp_path / "pics" / "spectrograms.png") == (round(100 * (1.8 * 2 + 0.6)), 320)


def test_results_folder_without_bundle_has_no_sample_predictions(trained, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(trained.output_dir / "results.json", run_dir)
    shutil.copytree(trained.output_dir / ".hydra", run_dir / ".hydra")
    plots.main([str(run_dir), "--out", str(tmp_path / "pics")])
    assert {p.name for p in (tmp_path / "pics").iterdir()} == ALL_PLOTS - {"sample_predictions.png"}


def test_plots_are_logged_into_the_active_mlflow_run_or_a_given_run(trained, tmp_path, monkeypatch):
    client = MlflowClient(trained.tracking_uri)
    experiment_id = client.get_run(trained.run_id).info.experiment_id
    # mlflow.set_tracking_uri also exports $MLFLOW_TRACKING_URI; monkeypatch puts
    # the environment back so later tests' subprocesses do not inherit it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.tracking_uri)
    mlflow.set_tracking_uri(trained.tracking_uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name="plots-inside-a-run") as active:
            plots.main([str(trained.bundle_dir), "--out", str(tmp_path / "a"), "--classes", "2"])
    finally:
        mlflow.set_tracking_uri(None)
    logged = {a.path for a in client.list_artifacts(active.info.run_id, "plots")}
    assert logged == {f"plots/{name}" for name in ALL_PLOTS}

    other = client.create_run(experiment_id, run_name="plots-by-run-id").info.run_id
    plots.main([str(trained.bundle_dir), "--out", str(tmp_path / "b"), "--classes", "2",
                "--run-id", other, "--tracking-uri", trained.tracking_uri])
    logged = {a.path for a in client.list_artifacts(other, "plots")}
    assert logged == {f"plots/{name}" for name in ALL_PLOTS}


def test_plots_of_something_else_is_a_clear_error(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(EscSweepError, match="neither a run output folder"):
        plots.main([str(tmp_path / "random"), "--out", str(tmp_path / "pics")])
    with pytest.raises(EscSweepError, match="--run-id nope: no MLflow records at"):
        plots.log_plots([], "nope", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists(), "asking for a run created an empty store"
