"""Final fit -> model bundle -> ``esc-sweep predict`` on files the model never saw.

Everything runs through the real command line (``python -m esc_sweep``) and a
real MLflow SQLite store; the bundle is trained once per session
(tests/synthetic_bundle.py).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from esc_sweep.bundle import load_bundle
from esc_sweep.models.init_from import classifier_head_names
from tests.conftest import run_cli
from tests.synthetic_bundle import (
    BUNDLE_OVERRIDES,
    CLIP_SECONDS,
    NUM_CLASSES,
    SAMPLE_RATE,
    stereo,
    synthetic_clips,
    trained_synthetic_run,
    write_synthetic_clips,
)

CLASS_NAMES = [f"class_{c}" for c in range(NUM_CLASSES)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_synthetic_run(tmp_path_factory)


def predict_cli(args: list[str], cwd: Path, env: dict | None = None):
    return run_cli(["predict", *args], cwd=cwd, env=env, timeout=300)


def one_line(text: str) -> str:
    """The CLI's console wraps long messages; compare them as one line."""
    return " ".join(text.split())


def test_final_fit_writes_a_self_contained_bundle(trained):
    bundle_dir = trained.bundle_dir
    assert {p.name for p in bundle_dir.iterdir()} == {"model.pt", "bundle.json", "metrics.json"}
    # One CV fold and a final fit: the fold model alone is no ensemble, and is not saved as one.
    assert not (trained.output_dir / "bundle_ensemble").exists()
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    results = json.loads((trained.output_dir / "results.json").read_text())
    assert meta["class_names"] == CLASS_NAMES
    assert meta["config"]["features"]["sample_rate"] == SAMPLE_RATE
    assert meta["config"]["dataset"]["clip_seconds"] == CLIP_SECONDS
    assert meta["config"]["model"]["name"] == "baseline_cnn" and meta["config"]["model"]["width"] == 8
    assert meta["cv"]["cv_val_acc_mean"] == pytest.approx(results["summary"]["cv_val_acc_mean"])
    # The final fit trained on every clip (10 per class), not only the CV's training folds.
    assert meta["training"]["num_clips"] == 10 * NUM_CLASSES
    assert meta["training"]["epochs"] == 8

    # The default standardisation is per clip: the bundle records it, and its answer does not
    # depend on the recording level (20 dB quieter gives the same probabilities).
    assert meta["config"]["features"]["normalize"] == "instance"
    bundle = load_bundle(bundle_dir)
    clips = torch.from_numpy(synthetic_clips(per_class=1, seed=7)[0][:3])
    assert torch.allclose(bundle.predict(clips), bundle.predict(clips * 0.1), atol=1e-4)
    assert bundle.class_names == CLASS_NAMES
    assert bundle.meta["mlflow_run_id"] == trained.run_id
    assert classifier_head_names(bundle.model) == {"backbone.head.3.weight", "backbone.head.3.bias"}
    probabilities = bundle.predict(torch.zeros(3, bundle.clip_samples))
    assert probabilities.shape == (3, NUM_CLASSES)
    assert torch.allclose(probabilities.sum(1), torch.ones(3), atol=1e-5)


def test_bundle_and_final_fit_metrics_are_logged_to_the_cv_run(trained):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained.tracking_uri)
    run = client.get_run(trained.run_id)
    assert run.data.tags.get("esc_sweep.role") == "cv"
    logged = {a.path for a in client.list_artifacts(trained.run_id, "bundle")}
    assert logged == {"bundle/model.pt", "bundle/bundle.json", "bundle/metrics.json"}
    assert 0.0 <= run.data.metrics["final_fit_train_acc"] <= 1.0


def test_predict_held_out_files_as_json(trained, tmp_path):
    files = write_synthetic_clips(tmp_path / "held_out", per_class=4, seed=123)
    out = predict_cli([str(trained.bundle_dir), str(tmp_path / "held_out"), "--format", "json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    document = json.loads(out.stdout)
    assert document["class_names"] == CLASS_NAMES
    by_name = {Path(p["file"]).name: p for p in document["predictions"]}
    assert len(by_name) == len(files) == 4 * NUM_CLASSES
    correct = [by_name[path.name]["label"] == label for path, label in files]
    # Chance is 20 %; the tones are easy and the model has never seen these clips.
    assert np.mean(correct) >= 0.8, by_name
    for prediction in by_name.values():
        probabilities = [item["probability"] for item in prediction["top"]]
        assert len(probabilities) == 5
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-5
        assert prediction["label"] == prediction["top"][0]["label"]
        assert prediction["seconds"] == pytest.approx(CLIP_SECONDS) and prediction["windows"] == 1


def test_top_k_csv_written_to_a_file(trained, tmp_path):
    files = write_synthetic_clips(tmp_path / "clips", per_class=1, seed=5)
    target = tmp_path / "predictions.csv"
    out = predict_cli(
        [str(trained.bundle_dir), *[str(p) for p, _ in files], "--top-k", "2", "--format", "csv", "--output", str(target)],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "file,rank" not in out.stdout  # it went to the file
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 2 * len(files)
    assert [r["rank"] for r in rows[:2]] == ["1", "2"]
    assert {r["label"] for r in rows} <= set(CLASS_NAMES)
    assert float(rows[0]["probability"]) >= float(rows[1]["probability"])


def test_default_output_is_a_table(trained, tmp_path):
    (path, label), = write_synthetic_clips(tmp_path, per_class=1, seed=9)[2:3]
    out = predict_cli([str(trained.bundle_dir), str(path)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Predictions" in out.stdout and path.name in out.stdout and label in out.stdout


def test_long_recording_is_cut_into_windows_and_averaged(trained, tmp_path):
    waveforms, targets = synthetic_clips(per_class=3, seed=321)
    rows = [i for i, t in enumerate(targets) if t == 2]
    tail = waveforms[rows[0]][: int(0.2 * SAMPLE_RATE)]
    long = np.concatenate([waveforms[r] for r in rows] + [tail])  # 1.7 s: 3 full windows + 0.2 s
    sf.write(tmp_path / "long.wav", long, SAMPLE_RATE)

    out = predict_cli([str(trained.bundle_dir), str(tmp_path / "long.wav"), "--format", "json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (prediction,) = json.loads(out.stdout)["predictions"]
    assert prediction["windows"] == 4
    assert prediction["seconds"] == pytest.approx(1.7, abs=1e-3)
    assert prediction["label"] == "class_2"

    # The average weights each window by its share of real audio (the padded tail counts 0.4).
    bundle = load_bundle(trained.bundle_dir)
    clip = bundle.clip_samples
    padded = np.concatenate([long, np.zeros(4 * clip - len(long), dtype=long.dtype)])
    per_window = bundle.predict(torch.from_numpy(padded.reshape(4, clip)))
    expected = (per_window[:3].sum(0) + 0.4 * per_window[3]) / 3.4
    assert torch.allclose(bundle.predict(torch.from_numpy(long))[0], expected, atol=1e-5)
    assert prediction["probability"] == pytest.approx(float(expected.max()), abs=1e-4)


def test_stereo_44k_and_flac_files_are_mixed_down_and_resampled(trained, tmp_path):
    rate = 44100
    waveforms, targets = synthetic_clips(per_class=1, seed=77, sample_rate=rate)
    for waveform, target in zip(waveforms, targets):
        sf.write(tmp_path / f"stereo-{target}.wav", stereo(waveform), rate, subtype="PCM_16")
        sf.write(tmp_path / f"mono-{target}.wav", waveform, rate, subtype="PCM_16")
        sf.write(tmp_path / f"stereo-{target}.flac", stereo(waveform), rate, subtype="PCM_24")
    out = predict_cli([str(trained.bundle_dir), str(tmp_path), "--format", "json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    by_name = {Path(p["file"]).name: p for p in json.loads(out.stdout)["predictions"]}
    assert len(by_name) == 3 * NUM_CLASSES
    for name, prediction in by_name.items():
        assert prediction["seconds"] == pytest.approx(CLIP_SECONDS, abs=1e-3), name
    for kind in ("stereo-{}.wav", "stereo-{}.flac"):
        correct = [by_name[kind.format(t)]["label"] == f"class_{t}" for t in targets]
        assert sum(correct) >= NUM_CLASSES - 1, (kind, by_name)
    # Averaging the channels (0.6x and 1.4x) gives the mono signal back.
    for t in targets:
        stereo_top = by_name[f"stereo-{t}.wav"]["top"]
        mono_top = by_name[f"mono-{t}.wav"]["top"]
        assert [i["label"] for i in stereo_top] == [i["label"] for i in mono_top]
        assert stereo_top[0]["probability"] == pytest.approx(mono_top[0]["probability"], abs=2e-3)


def test_a_missing_file_is_one_clear_error_without_traceback(trained, tmp_path):
    out = predict_cli([str(trained.bundle_dir), str(tmp_path / "nope.wav")], cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"no such file or folder: {tmp_path / 'nope.wav'}" in one_line(out.stderr)
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty_folder", "holds no audio files"),
        ("not_audio", "cannot decode audio file"),
        ("missing_bundle", "not found: give a bundle folder"),
        ("not_a_bundle", "is not a model bundle"),
        ("unknown_run_id", "not found at tracking URI"),
        ("fold_run_id", "has no 'bundle/' artifact"),
        ("bad_top_k", "--top-k 0: must be at least 1"),
    ],
)
def test_bad_inputs_raise_a_clear_user_error(trained, tmp_path, monkeypatch, case, message):
    # In process: the CLI turns any EscSweepError into one line (checked above).
    from esc_sweep.app import predict
    from esc_sweep.errors import EscSweepError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.tracking_uri)
    good_file = write_synthetic_clips(tmp_path / "ok", per_class=1)[0][0]
    bundle, inputs, extra = str(trained.bundle_dir), [str(good_file)], []
    if case == "empty_folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no audio here")
        inputs = [str(tmp_path / "empty")]
    elif case == "not_audio":
        (tmp_path / "fake.wav").write_text("this is not a RIFF file")
        inputs = [str(tmp_path / "fake.wav")]
    elif case == "missing_bundle":
        bundle = str(tmp_path / "no_such_bundle")
    elif case == "not_a_bundle":
        bundle = str(tmp_path / "ok")
    elif case == "unknown_run_id":
        bundle = "0123456789abcdef0123456789abcdef"
    elif case == "fold_run_id":  # a real run, but a fold's: the bundle lives in the CV run
        from mlflow.tracking import MlflowClient

        client = MlflowClient(trained.tracking_uri)
        experiment = client.get_run(trained.run_id).info.experiment_id
        (fold_run,) = client.search_runs([experiment], "tags.`esc_sweep.role` = 'fold'")
        bundle = fold_run.info.run_id
    elif case == "bad_top_k":
        extra = ["--top-k", "0"]
    with pytest.raises(EscSweepError) as caught:
        predict.main([bundle, *inputs, *extra])
    assert message in str(caught.value)


def test_predict_by_mlflow_run_id_matches_the_bundle_folder(trained, tmp_path):
    files = write_synthetic_clips(tmp_path / "clips", per_class=1, seed=11)
    # The run id alone; the store comes from $MLFLOW_TRACKING_URI as in training.
    out = predict_cli(
        [trained.run_id, str(tmp_path / "clips"), "--format", "json"], cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": trained.tracking_uri},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Downloading artifacts" not in out.stderr  # MLflow's download bars stay off
    got = {Path(p["file"]).name: p for p in json.loads(out.stdout)["predictions"]}
    assert len(got) == len(files)

    local = load_bundle(trained.bundle_dir)
    # runs:/<id> with an explicit tracking URI gives the same model.
    remote = load_bundle(f"runs:/{trained.run_id}", tracking_uri=trained.tracking_uri)
    assert remote.class_names == local.class_names
    for path, _ in files:
        waveform = torch.from_numpy(sf.read(path, dtype="float32")[0])
        expected = local.predict(waveform)[0]
        assert torch.allclose(remote.predict(waveform)[0], expected, atol=1e-6)
        top_label, top_probability = local.top_k(expected, 1)[0]
        assert got[path.name]["label"] == top_label
        assert got[path.name]["probability"] == pytest.approx(top_probability, abs=1e-5)


def test_one_bad_file_among_many_keeps_the_others_and_output_never_overwrites_an_input(trained, tmp_path):
    files = write_synthetic_clips(tmp_path / "clips", per_class=2, seed=9)
    bad = tmp_path / "clips" / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    target = tmp_path / "predictions.csv"
    out = predict_cli([str(trained.bundle_dir), str(tmp_path / "clips"), "--format", "csv", "-o", str(target)],
                      cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "1 of" in one_line(out.stderr) and "broken.wav" in one_line(out.stderr)
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert {Path(r["file"]).name for r in rows if r["label"] != "error"} == {p.name for p, _ in files}
    assert [Path(r["file"]).name for r in rows if r["label"] == "error"] == ["broken.wav"]

    audio = files[0][0]
    before = audio.read_bytes()
    out = predict_cli([str(trained.bundle_dir), str(audio), "-o", str(audio)], cwd=tmp_path)
    assert out.returncode == 2 and "refusing to write predictions over it" in one_line(out.stderr)
    assert audio.read_bytes() == before


@pytest.fixture(scope="module")
def two_fold_run(tmp_path_factory):
    """A 2-fold CV with test-time crops and a final fit: the fold ensemble is saved beside the bundle."""
    base = tmp_path_factory.mktemp("two-fold-ensemble")
    uri = f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"
    overrides = [o for o in BUNDLE_OVERRIDES if not o.startswith("trainer.folds")]
    out = run_cli([*overrides, "trainer.folds=[1,2]", "trainer.tta_crops=3"], cwd=base,
                  env={"MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "fold ensemble saved" in one_line(out.stderr)
    (output_dir,) = [p.parent for p in (base / "outputs" / "runs").glob("*/*/results.json")]
    return output_dir, uri


def test_fold_ensemble_is_saved_logged_and_predicts_the_average_of_its_folds(two_fold_run, tmp_path):
    from mlflow.tracking import MlflowClient

    output_dir, uri = two_fold_run
    ensemble_dir = output_dir / "bundle_ensemble"
    meta = json.loads((ensemble_dir / "bundle.json").read_text())
    assert [m["fold"] for m in meta["members"]] == [1, 2]
    assert (output_dir / "bundle" / "model.pt").is_file()  # the final fit is still there, unchanged

    # Test-time crops: a metric of their own beside single-view accuracy, in results.json and MLflow.
    results = json.loads((output_dir / "results.json").read_text())
    assert [f["val_acc_tta"] is not None for f in results["folds"]] == [True, True]
    assert 0.2 <= results["summary"]["cv_val_acc_tta_mean"] <= 1.0
    client = MlflowClient(uri)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.data.metrics["cv_val_acc_tta_mean"] == pytest.approx(results["summary"]["cv_val_acc_tta_mean"],
                                                                    rel=1e-6)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc_tta")] == [1, 2]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "bundle_ensemble")}
    assert {"bundle_ensemble/bundle.json", "bundle_ensemble/members"} <= logged

    files = write_synthetic_clips(tmp_path / "held_out", per_class=2, seed=321)
    out = predict_cli([str(ensemble_dir), str(tmp_path / "held_out"), "--format", "json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    document = json.loads(out.stdout)
    assert document["models"] == 2 and document["tta_crops"] == 3  # the crops the run was scored with
    by_name = {Path(p["file"]).name: p for p in document["predictions"]}
    assert np.mean([by_name[p.name]["label"] == label for p, label in files]) >= 0.8

    # Each member predicts on its own; the ensemble's probabilities are their mean.
    ensemble = load_bundle(ensemble_dir, tta_crops=0)
    waveform = torch.from_numpy(sf.read(files[0][0], dtype="float32")[0])
    members = [torch.softmax(m(ensemble.spectrogram(waveform[None])), 1)[0] for m in ensemble.model.members]
    assert torch.allclose(ensemble.predict(waveform)[0], torch.stack(members).mean(0), atol=1e-5)
    remote = load_bundle(f"runs:/{run.info.run_id}/bundle_ensemble", tracking_uri=uri)
    assert remote.num_members == 2

    out = predict_cli([str(ensemble_dir), str(files[0][0]), "--tta", "0", "--format", "json"], cwd=tmp_path)
    assert out.returncode == 0 and json.loads(out.stdout)["tta_crops"] == 0
    out = predict_cli([str(ensemble_dir), str(files[0][0]), "--tta", "-2"], cwd=tmp_path)
    assert out.returncode == 2 and "--tta -2" in one_line(out.stderr)


@pytest.mark.parametrize("folds, held_out", [
    ("[1,2]", [(1, [2, 3, 4, 5]), (2, [1, 3, 4, 5])]),
    ("[3]", [(3, [1, 2, 4, 5])]),  # one fold asked for by name is kept too: scored on fold 3 only
])
def test_keep_fold_models_saves_the_fold_ensemble_without_a_final_fit(tmp_path, folds, held_out):
    overrides = [o for o in BUNDLE_OVERRIDES if not o.startswith(("trainer.folds", "trainer.final_fit"))]
    out = run_cli([*overrides, f"trainer.folds={folds}", "trainer.final_fit=false", "trainer.keep_fold_models=true",
                   "tracking.enabled=false"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (output_dir,) = [p.parent for p in (tmp_path / "outputs" / "runs").glob("*/*/results.json")]
    assert not (output_dir / "bundle").exists()  # no final fit, no sixth training
    meta = json.loads((output_dir / "bundle_ensemble" / "bundle.json").read_text())
    # Each member is known by the fold it never saw: robustness.py --fold-members scores it there.
    assert [(m["fold"], m["trained_on_folds"]) for m in meta["members"]] == held_out
    assert load_bundle(output_dir / "bundle_ensemble").num_members == len(held_out)
