"""UrbanSound8K and FSDKaggle2018 tried as a user would: the recipe unchanged, a bundle, predict, MLflow names."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import optuna
import pytest

from tests.conftest import run_cli
from tests.data.official_layouts import make_fsdkaggle2018, make_urbansound8k

# The recipe as users run it, made short: one fold (or the holdout), one thread, two epochs.
SHORT = ["trainer.epochs=2", "trainer.num_threads=1", "trainer.progress=false", "trainer.final_fit=true",
         "trainer.eval_batch_size=64"]


def _run(args: list[str], cwd: Path):
    out = run_cli(args, cwd=cwd, env={"ESC50_ROOT": None, "URBANSOUND8K_ROOT": None, "COLUMNS": "200"}, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = Path(next(line.split("results written to ", 1)[1] for line in (out.stdout + out.stderr).splitlines()
                        if "results written to " in line).strip()).parent
    return out, run_dir, json.loads((run_dir / "results.json").read_text())


def _cv_run_names(uri: str) -> list[str]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("esc_sweep")
    runs = client.search_runs([experiment.experiment_id])
    return [r.info.run_name for r in runs if "mlflow.parentRunId" not in r.data.tags]


def test_quick_cpu_on_urbansound8k_trains_bundles_predicts_and_names_the_data(tmp_path):
    root = make_urbansound8k(tmp_path / "data", classes=["dog_bark", "drilling", "siren"])
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out, run_dir, results = _run(["experiment=quick_cpu", "dataset=urbansound8k", f"dataset.root={root}",
                                  "trainer.folds=[1]", f"dataset.cache_dir={tmp_path / 'cache'}",
                                  f"tracking.uri={uri}", *SHORT], tmp_path)
    assert results["data"]["dataset"] == "urbansound8k" and results["data"]["dataset_folds"] == 10
    assert results["class_names"] == ["dog_bark", "drilling", "siren"]
    assert 0 <= results["summary"]["cv_val_map3_mean"] <= 1
    assert any(name.endswith("resnet10t · urbansound8k · fold 1 · 2 ep") for name in _cv_run_names(uri))

    clip = next((root / "audio" / "fold1").glob("*.wav"))
    predicted = run_cli(["predict", str(run_dir / "bundle"), str(clip), "--format", "json"], cwd=tmp_path, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    record = json.loads(predicted.stdout)["predictions"][0]
    assert record["label"] in results["class_names"] and record["windows"] == 1


def test_fsdkaggle2018_holdout_with_variable_length_clips_and_map3(tmp_path):
    root = make_fsdkaggle2018(tmp_path / "data", ["Bark", "Cello", "Hi-hat"], train_per_class=6, test_per_class=3)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out, run_dir, results = _run(["experiment=quick_cpu", "dataset=fsdkaggle2018", f"dataset.root={root}",
                                  "augmentation.crop_seconds=0", "trainer.validation=inner", "trainer.objective=map3",
                                  "dataset.unverified_weight=0.5", f"dataset.cache_dir={tmp_path / 'cache'}",
                                  f"tracking.uri={uri}", *SHORT], tmp_path)
    assert results["data"]["protocol"] == "holdout" and results["data"]["folds"] == [1]
    assert results["folds"][0]["confusion"] and sum(map(sum, results["folds"][0]["confusion"])) == 9  # the test set
    assert results["objective"]["metric"] == "map3"
    assert results["objective"]["value"] == pytest.approx(results["summary"]["cv_inner_map3_mean"])
    assert "val MAP@3" in out.stdout
    assert any(name.endswith("resnet10t · fsdkaggle2018 · holdout · 2 ep") for name in _cv_run_names(uri))
    assert (run_dir / "bundle").is_dir()


@pytest.mark.parametrize("args, message", [
    (["dataset=urbansound8k", "dataset.protocol=holdout"], "dataset.kind=urbansound8k has no train/test split"),
    (["dataset=fsdkaggle2018", "trainer.folds=[1,2]"], "a holdout has one test split"),
    (["dataset=fsdkaggle2018", "trainer.tta_crops=3"], "every clip is already scored over all its windows"),
    (["dataset=urbansound8k"], "UrbanSound8K root /nonexistent (from dataset.root) does not exist"),
    (["dataset=fsdkaggle2018"], "FSDKaggle2018 root /nonexistent (from dataset.root) does not exist"),
])
def test_protocol_misuse_exits_2_before_any_work(tmp_path, args, message):
    out = run_cli([*args, "dataset.root=/nonexistent", "tracking.enabled=false"], cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_a_sweep_maximises_map3_on_the_fsdkaggle2018_holdout(tmp_path):
    """trainer.objective=map3: each trial returns its MAP@3 (the inner split's), the study names it so."""
    root = make_fsdkaggle2018(tmp_path / "data", ["Bark", "Cello", "Hi-hat"], train_per_class=6, test_per_class=3)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    out = run_cli(["-m", "hparams_search=esc50_optuna", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}",
                   "hydra.sweeper.study_name=fsd_map3", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   "dataset=fsdkaggle2018", f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'cache'}",
                   "trainer.validation=inner", "trainer.objective=map3", "trainer.epochs=1", "trainer.batch_size=16",
                   "features.n_mels=32", "model=baseline_cnn", "model.width=4", "augmentation=none",
                   "augmentation.time_mask_width=0", "augmentation.freq_mask_width=0", "trainer.num_threads=1",
                   "trainer.progress=false", "tracking.enabled=false"],
                  cwd=tmp_path, env={"COLUMNS": "200", "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                  timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study = optuna.load_study(study_name="fsd_map3", storage=storage)
    assert study.metric_names == ["mean_inner_map3"]  # trainer.validation=inner: the inner split's MAP@3
    for trial in study.trials:
        (value,) = trial.user_attrs["fold_values"].values()  # the holdout's one "fold"
        assert trial.value == pytest.approx(value) and 1 / 3 <= value <= 1  # MAP@3 >= 1/3 with 3 classes
        assert trial.user_attrs["dataset_folds"] == 1
