"""`esc-sweep runs` (comparable runs ranked together) and `esc-sweep --help`, through the real CLI.

The runs are written straight into a SQLite store with ``MlflowClient``, tagged
as the tracker tags them: no training needed to check the grouping.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from esc_sweep.cli import SUBCOMMANDS
from esc_sweep.tracking import labels as L
from esc_sweep.tracking.client import ROLE_TAG
from tests.conftest import run_cli

NO_SERVER = {"MLFLOW_TRACKING_URI": None}


def _cv_run(client: MlflowClient, experiment_id: str, *, model: str, key: str | None, acc: float,
            status: str = "FINISHED", role: str = "cv", folds: str = "1,2,3,4,5", features: str = "mel",
            overrides: str | None = None, ci95: tuple[float, float] | None = None) -> str:
    tags = {ROLE_TAG: role, L.MODEL_TAG: model, L.FEATURES_TAG: features, L.DATASET_TAG: "esc50"}
    if overrides is not None:
        tags["esc_sweep.overrides"] = overrides
    if key is not None:
        tags.update({L.COMPARE_KEY_TAG: key, L.FOLDS_TAG: folds, L.NUM_FOLDS_TAG: str(len(folds.split(","))),
                     L.NUM_CLASSES_TAG: "50", L.SELECTION_TAG: "none", L.RECIPE_TAG: "none",
                     L.FINGERPRINT_TAG: "abcd1234abcd1234"})
    run_id = client.create_run(experiment_id, tags=tags, run_name=f"{model}-{key}").info.run_id
    for name, value in (("cv_val_acc_mean", acc), ("cv_val_acc_std", 0.02), ("cv_gap_mean", 0.1)):
        client.log_metric(run_id, name, value)
    if ci95 is not None:
        client.log_metric(run_id, "cv_val_acc_ci95_low", ci95[0])
        client.log_metric(run_id, "cv_val_acc_ci95_high", ci95[1])
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("runs-store")
    uri = f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"
    (cwd / "mlruns").mkdir()
    client = MlflowClient(uri)
    experiment = client.create_experiment("esc_sweep")
    ids = {
        "a_low": _cv_run(client, experiment, model="resnet18", key="aaaaaaaaaaaa", acc=0.61),
        "a_high": _cv_run(client, experiment, model="efficientnet_b2", key="aaaaaaaaaaaa", acc=0.83),
        "b_only": _cv_run(client, experiment, model="baseline_cnn", key="bbbbbbbbbbbb", acc=0.95, folds="1"),
        "legacy": _cv_run(client, experiment, model="resnet10t", key=None, acc=0.70),
        "failed": _cv_run(client, experiment, model="convnext_atto", key="aaaaaaaaaaaa", acc=0.99, status="FAILED"),
        "fold": _cv_run(client, experiment, model="mobilenetv3_large_100", key="aaaaaaaaaaaa", acc=0.99,
                        role="fold"),
    }
    other = client.create_experiment("elsewhere")
    ids["other"] = _cv_run(client, other, model="resnet34", key="aaaaaaaaaaaa", acc=0.5)
    return cwd, uri, ids


def _row(out: str, run_id: str) -> str:
    (line,) = [line for line in out.splitlines() if run_id[:8] in line]
    return line


def test_runs_ranks_only_comparable_runs_together(store):
    cwd, uri, ids = store
    out = run_cli(["runs"], cwd=cwd, env=NO_SERVER, timeout=300)  # the default store of the folder
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    text = out.stdout
    # Finished CV runs of experiment esc_sweep only.
    for name in ("failed", "fold", "other"):
        assert ids[name][:8] not in text, name
    lines = text.splitlines()
    position = {name: next(i for i, line in enumerate(lines) if ids[name][:8] in line)
                for name in ("a_low", "a_high", "b_only", "legacy")}
    # Group aaaa: the better run first, both under the group's heading; bbbb is its own group.
    heading_a = next(i for i, line in enumerate(lines) if "key aaaaaaaaaaaa" in line)
    heading_b = next(i for i, line in enumerate(lines) if "key bbbbbbbbbbbb" in line)
    assert heading_a < position["a_high"] < position["a_low"]
    assert not heading_a < heading_b < position["a_low"] and not heading_b < heading_a < position["b_only"]
    row = _row(text, ids["a_high"])
    # No interval logged (an older run): Student t from the std over 5 folds, 2.776 * 2.0 / sqrt(5) = 2.5 points.
    # A ranked group's folds, classes and selection are in its heading, not in every row.
    assert "esc50 · 50 classes · folds 1,2,3,4,5 · selection none" in lines[heading_a]
    assert re.search(r"│ 1 │ efficientnet_b2 │ mel +│ none +│ +\? │ +83\.0% \[80\.5, 85\.5\] │ "
                     r"\+10\.0% │ \d{4}-\d\d-\d\d \d\d:\d\d │", row), row
    assert "95.0% │" in _row(text, ids["b_only"])  # one fold: no interval
    assert "│ 2 │ resnet18" in _row(text, ids["a_low"])
    assert "│ 1 │ baseline_cnn" in _row(text, ids["b_only"])  # 95 % is not ranked above the 5-fold runs
    # Older runs without a key: listed last, unranked.
    assert position["legacy"] > max(position["a_low"], position["b_only"])
    assert "│ - │ resnet10t" in _row(text, ids["legacy"]) and "without a comparability key" in text
    assert "4 finished cross-validation run(s) in experiment esc_sweep, 2 comparable group(s)" in text


def test_runs_that_differ_only_in_their_commands_show_the_difference_and_the_interval(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    client = MlflowClient(uri)
    experiment = client.create_experiment("esc_sweep")
    same = "dataset=esc10 trainer.folds=[1,2,3,4,5] trainer.epochs=30"
    fast = _cv_run(client, experiment, model="baseline_cnn", key="cccccccccccc", acc=0.80,
                   overrides=f"{same} optimizer.lr=0.003", ci95=(0.751, 0.849))
    slow = _cv_run(client, experiment, model="baseline_cnn", key="cccccccccccc", acc=0.70,
                   overrides=f"{same} optimizer.lr=0.0003 augmentation=none", ci95=(0.612, 0.788))
    again = _cv_run(client, experiment, model="baseline_cnn", key="cccccccccccc", acc=0.75, overrides=same)
    out = run_cli(["runs", "--tracking-uri", uri], cwd=tmp_path, env=NO_SERVER, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "overrides" in out.stdout, out.stdout
    fast_row, slow_row, again_row = (_row(out.stdout, run) for run in (fast, slow, again))
    # Only what is not common to all three: the shared dataset, folds and epochs are left out.
    assert "optimizer.lr=0.003" in fast_row and "augmentation" not in fast_row and "esc10" not in fast_row
    assert "optimizer.lr=0.0003 augmentation=none" in slow_row
    assert "(defaults)" in again_row  # ran the defaults of what the others changed
    # The logged interval as it is; without one, Student t from mean, std and 5 folds.
    assert "80.0% [75.1, 84.9]" in fast_row and "70.0% [61.2, 78.8]" in slow_row
    assert "75.0% [72.5, 77.5]" in again_row


def test_runs_all_experiments_and_explicit_uri(store, tmp_path):
    _, uri, ids = store
    out = run_cli(["runs", "--tracking-uri", uri, "--all"], cwd=tmp_path, env=NO_SERVER, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "elsewhere" in _row(out.stdout, ids["other"])
    out = run_cli(["runs", "--tracking-uri", uri, "--experiment", "elsewhere"], cwd=tmp_path, env=NO_SERVER,
                  timeout=300)
    assert out.returncode == 0 and ids["other"][:8] in out.stdout and ids["a_high"][:8] not in out.stdout


def test_runs_errors_are_one_clear_line(store, tmp_path):
    _, uri, _ = store
    out = run_cli(["runs"], cwd=tmp_path, env=NO_SERVER, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "no MLflow records at" in text and "Traceback" not in text
    assert not (tmp_path / "mlruns").exists()  # listing never creates a store
    out = run_cli(["runs", "--tracking-uri", uri, "--experiment", "nope"], cwd=tmp_path, env=NO_SERVER, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "no MLflow experiment 'nope'" in text and "elsewhere" in text


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_subcommands_then_the_training_help(flag, tmp_path):
    out = run_cli([flag], cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "Traceback" not in text + out.stderr
    assert set(SUBCOMMANDS) >= {"predict", "serve", "plots", "runs"}
    for name in SUBCOMMANDS:  # every subcommand, one line each (dashboard too when it is there)
        line = next((l for l in text.splitlines() if re.match(rf"  {name} +\S", l)), None)
        assert line is not None, f"{name} missing from --help"
        assert "(no description)" not in line
    assert "usage: esc-sweep runs [--tracking-uri URI] [--experiment NAME] [--all]" in text
    assert "esc-sweep SUBCOMMAND --help" in text
    # Hydra's part, from conf/hydra/help/esc_sweep.yaml: groups with their options, main keys, examples.
    assert text.index("Subcommands") < text.index("== Config groups")
    assert "model: ast, baseline_cnn, convnext_atto, efficientat_mn01" in text and "panns_cnn14" in text
    assert "experiment: cpu_hour, envnet_v2_bc, esc50_cnn, esc50_resnet, quick_cpu" in text
    assert "dataset: esc10, esc50, esc50_categories, folder, fsdkaggle2018, synthetic, urbansound8k" in text
    assert "hparams_search: " in text and "tracking: mlflow, none" in text
    for key in ("model.name=", "trainer.epochs=", "trainer.folds=", "tracking.experiment_name=", "dataset.root="):
        assert f"\n  {key}" in text, key
    assert "$ESC50_ROOT" in text and "== Examples ==" in text and "python -m esc_sweep experiment=quick_cpu" in text
    assert "is powered by Hydra" not in text  # not Hydra's default template
    assert not list(Path(tmp_path).iterdir())  # help runs nothing


def test_runs_help_describes_its_options(tmp_path):
    out = run_cli(["runs", "--help"], cwd=tmp_path, timeout=300)
    assert out.returncode == 0
    for option in ("--tracking-uri", "--experiment", "--all"):
        assert option in out.stdout
