"""``esc-sweep compare`` through the real CLI: run folders and MLflow run ids, JSON that names
the difference, its interval, the p-value and the probabilities; incomparable runs refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esc_sweep.stats import compare_paired
from tests.conftest import FAST_SYNTHETIC, REPO

ENV = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esc_sweep", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)


def train(cwd: Path, name: str, *extra: str) -> Path:
    out = cli(cwd, *FAST_SYNTHETIC, "trainer.epochs=2", "trainer.progress=false", "trainer.num_threads=1",
              f"hydra.run.dir=runs/{name}", *extra)
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd / "runs" / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("compare")
    return cwd, {
        "a": train(cwd, "a"),
        "b": train(cwd, "b", "optimizer.lr=0.003"),
        "repeated": train(cwd, "repeated", "trainer.repeats=2", "trainer.folds=[1,2,3]"),
        "repeated_b": train(cwd, "repeated_b", "trainer.repeats=2", "trainer.folds=[1,2,3]", "optimizer.lr=0.003"),
        "other_data": train(cwd, "other_data", "dataset.num_classes=4", "tracking.enabled=false"),
        "other_folds": train(cwd, "other_folds", "trainer.folds=[1,2,3]", "tracking.enabled=false"),
    }


def fold_values(run: Path) -> dict[tuple[int, int], float]:
    results = json.loads((run / "results.json").read_text())
    return {(f["repeat"], f["fold"]): f["val_acc"] for f in results["folds"]}


def test_two_run_folders_compare_paired_by_fold(runs):
    cwd, run = runs
    out = cli(cwd, "compare", str(run["a"]), str(run["b"]), "--format", "json", "--rope", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    (pair,) = json.loads(out.stdout)["comparisons"]
    a, b = fold_values(run["a"]), fold_values(run["b"])
    keys = sorted(a)
    expected = compare_paired([a[k] for k in keys], [b[k] for k in keys], folds=5, rope=0.02)
    assert pair["difference"] == pytest.approx(100 * expected.mean_difference)
    assert pair["difference"] == pytest.approx(100 * (sum(b.values()) - sum(a.values())) / 5)
    assert pair["ci95"] == pytest.approx([100 * v for v in expected.ci95])
    assert pair["p_value"] == pytest.approx(expected.p_value)
    assert pair["prob_a_better"] + pair["prob_equivalent"] + pair["prob_b_better"] == pytest.approx(1.0)
    assert pair["prob_b_better"] == pytest.approx(expected.prob_b_better)
    assert pair["n_pairs"] == 5 and pair["rope"] == 2.0 and pair["dataset_folds"] == 5
    assert "optimizer.lr=0.003" in pair["b"]["overrides"]

    by_map3 = cli(cwd, "compare", str(run["a"]), str(run["b"]), "--format", "json", "--metric", "val_map3")
    assert by_map3.returncode == 0, by_map3.stderr[-3000:]  # every run records MAP@3 per fold
    (pair_map3,) = json.loads(by_map3.stdout)["comparisons"]
    a3, b3 = ({(f["repeat"], f["fold"]): f["val_map3"] for f in json.loads((r / "results.json").read_text())["folds"]}
              for r in (run["a"], run["b"]))
    assert pair_map3["difference"] == pytest.approx(100 * (sum(b3.values()) - sum(a3.values())) / 5)

    text = cli(cwd, "compare", str(run["a"]), str(run["b"]))
    assert text.returncode == 0
    assert "95 % CI" in text.stdout and "P(A better)" in text.stdout and "verdict:" in text.stdout


def test_run_ids_give_the_same_numbers_as_folders(runs):
    cwd, run = runs
    # results.json names the run's MLflow run; compare takes a unique prefix of its id.
    ids = [json.loads((run[name] / "results.json").read_text())["mlflow_run_id"][:8] for name in ("a", "b")]
    by_id = json.loads(cli(cwd, "compare", *ids, "--format", "json").stdout)["comparisons"][0]
    by_folder = json.loads(cli(cwd, "compare", str(run["a"]), str(run["b"]), "--format", "json").stdout)["comparisons"][0]
    for key in ("difference", "ci95", "p_value", "prob_a_better", "prob_equivalent", "prob_b_better"):
        assert by_id[key] == pytest.approx(by_folder[key])


def test_repeats_are_paired_repeat_by_repeat(runs):
    cwd, run = runs
    out = cli(cwd, "compare", str(run["repeated"]), str(run["repeated_b"]), "--format", "json")
    assert out.returncode == 0, out.stderr[-3000:]
    pair = json.loads(out.stdout)["comparisons"][0]
    assert pair["n_pairs"] == 6 and pair["repeats"] == 2
    a, b = fold_values(run["repeated"]), fold_values(run["repeated_b"])
    keys = sorted(a)
    expected = compare_paired([a[k] for k in keys], [b[k] for k in keys], folds=5, repeats=2)
    assert pair["ci95"] == pytest.approx([100 * v for v in expected.ci95])


@pytest.mark.parametrize("other, named", [("other_data", "classes"), ("other_folds", "folds")])
def test_runs_measured_otherwise_are_refused_in_one_line(runs, other, named):
    cwd, run = runs
    out = cli(cwd, "compare", str(run["a"]), str(run[other]))
    assert out.returncode == 2
    lines = [line for line in out.stdout.splitlines() + out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not measured alike" in lines[0]
    assert named in lines[0]


def test_unknown_runs_are_one_line(runs):
    cwd, run = runs
    for ref in ("nosuchrun", str(cwd / "missing")):
        out = cli(cwd, "compare", str(run["a"]), ref)
        assert out.returncode == 2 and (out.stdout + out.stderr).startswith("error: "), out.stdout + out.stderr[-2000:]
        assert len([line for line in (out.stdout + out.stderr).splitlines() if line.strip()]) == 1
