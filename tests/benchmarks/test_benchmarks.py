"""The benchmark scripts run end to end on tiny synthetic settings and report sane numbers."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

TINY = [
    "dataset=synthetic",
    "dataset.clips_per_class=10",
    "dataset.clip_seconds=0.5",
    "features.n_mels=32",
    "features.n_fft=256",
    "model=baseline_cnn",
    "model.width=8",
    "trainer.batch_size=8",
]


def _run(script: str, args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ESC_SWEEP_CACHE": str(tmp_path / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    # From tmp_path, as from anywhere outside the repo: the scripts must find the package and conf/ themselves.
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _positive(x) -> bool:
    return isinstance(x, float) and x > 0 and x == x and x != float("inf")


def test_throughput_measures_three_modes_and_writes_ratios(tmp_path):
    out = tmp_path / "throughput.json"
    proc = _run("throughput.py", [*TINY, "--steps", "3", "--warmup", "1", "--clips", "32", "--out", str(out)], tmp_path)
    assert "b/a = " in proc.stdout and "b/c = " in proc.stdout

    result = json.loads(out.read_text())
    assert set(result["modes"]) == {"a", "b", "c"}
    for mode in result["modes"].values():
        (run,) = mode["rounds"]
        assert _positive(mode["clips_per_s"])
        # clips/s is what the timed steps processed per second of measured time.
        assert mode["clips_per_s"] == pytest.approx(3 * 8 / run["seconds"])
        assert len(run["step_seconds"]) == 3  # CPU: one duration per timed step
        # The steps lie inside the timed window (up to rounding and a preemption between two stamps).
        assert sum(run["step_seconds"]) <= run["seconds"] * 1.01 + 5e-3
    ratios = result["ratios"]
    assert _positive(ratios["b_over_a"]) and _positive(ratios["b_over_c"])
    modes = result["modes"]
    assert ratios["b_over_a"] == pytest.approx(modes["b"]["clips_per_s"] / modes["a"]["clips_per_s"])
    assert ratios["b_over_c"] == pytest.approx(modes["b"]["clips_per_s"] / modes["c"]["clips_per_s"])

    assert result["config"]["feature_shape"] == [1, 32, 51]  # 0.5 s at 16 kHz, hop 160
    assert result["config"]["clips"] == 32
    assert result["config"]["num_workers_conventional"] == max(0, (os.cpu_count() or 1) - 1)
    machine = result["machine"]
    assert machine["cpu_count"] == os.cpu_count() and machine["device"] == "cpu" and machine["torch"]
    assert len(result["load_avg_start"]) == 3 and len(result["load_avg_end"]) == 3


def test_throughput_rejects_bad_arguments(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), *TINY, "--modes", "xyz"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "--modes" in proc.stderr


def test_cv_wall_breaks_a_cross_validation_into_phases(tmp_path):
    out = tmp_path / "cv_wall.json"
    _run("cv_wall.py", [*TINY, "trainer.epochs=2", "trainer.folds=[1,2]", "--out", str(out)], tmp_path)

    result = json.loads(out.read_text())
    phases = result["phases_seconds"]
    for name in ("seeding + load + features", "model build + normalisation stats", "train steps", "evaluation"):
        assert phases[name] > 0, name
    # The calls cross_validate makes before on_cv_start, timed one by one.
    prepare = result["prepare_seconds"]
    assert prepare["load (cache hit)"] > 0 and prepare["features"] > 0
    assert prepare["seeding + determinism flags"] >= 0
    # The phases, "other" included, account for the whole run.
    assert sum(phases.values()) == pytest.approx(result["cv_total_seconds"], rel=1e-6)
    assert phases["other"] >= -1e-6

    folds = result["folds"]
    assert [f["fold"] for f in folds] == [1, 2]
    assert all(len(f["train_seconds"]) == 2 and len(f["eval_seconds"]) == 2 for f in folds)
    assert phases["train steps"] == pytest.approx(sum(sum(f["train_seconds"]) for f in folds), abs=0.01)

    tracked = result["config"]["tracking"]
    assert (phases["tracking"] > 0) == tracked
    if not tracked:
        assert any("tracking" in note for note in result["notes"])
    assert result["decode_seconds"]["first load"] > 0 and result["decode_seconds"]["second load"] > 0

    assert 0 < result["first_step_in_process_seconds"] < result["cv_total_seconds"]
    # Data ready (on_cv_start), first model built (on_fold_start), first step (on_step_end), in order.
    in_process = list(result["milestones_in_process_seconds"].values())
    assert len(in_process) == 3 and in_process == sorted(in_process) and in_process[0] > 0
    assert in_process[-1] == result["first_step_in_process_seconds"]
    fresh = result["first_step_fresh_process"]
    milestones = list(fresh["milestones"].values())
    assert fresh["seconds_to_first_step"] == milestones[-1]
    known = [m for m in milestones if m is not None]
    assert known == sorted(known) and known[0] > 0  # launch, imports, ..., first step, in order
    assert result["config"]["folds"] == [1, 2] and len(result["load_avg_end"]) == 3
    # Checkpoints, tracking store and artifacts went to a temporary folder, not the working directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "cv_wall.json"] or sorted(
        p.name for p in tmp_path.iterdir()) == ["cv_wall.json"]


BENCHMARK_SCRIPTS = ["common.py", "throughput.py", "cv_wall.py"]


def _esc_sweep_imports(tree: ast.AST):
    """(module, imported names, local names) of every ``esc_sweep`` import in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "esc_sweep":
            yield node.module, [a.name for a in node.names], [a.asname or a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "esc_sweep":
                    yield alias.name, [], [alias.asname or alias.name.split(".")[0]]


@pytest.mark.parametrize("script", BENCHMARK_SCRIPTS)
def test_benchmarks_use_the_trainer_as_it_is(script):
    """Current module paths only, no patching of esc_sweep, no copy of the training step."""
    tree = ast.parse((REPO / "benchmarks" / script).read_text())
    bound: set[str] = set()
    for module, names, local in _esc_sweep_imports(tree):
        loaded = importlib.import_module(module)  # an old path (esc_sweep.trainer, ...) fails here
        for name in names:
            submodule = hasattr(loaded, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None
            assert hasattr(loaded, name) or submodule, f"{module}.{name}"
        bound.update(local)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in {"setattr", "delattr"}, f"{script}:{node.lineno}: {node.func.id}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            # The optimisation step is esc_sweep.training.loop.train_step, called, not copied.
            assert node.func.attr not in {"backward", "zero_grad"}, f"{script}:{node.lineno}: .{node.func.attr}()"
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:  # ``module.name = ...`` on an imported esc_sweep module or class
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                assert target.value.id not in bound, f"{script}:{node.lineno}: assigns {target.value.id}.{target.attr}"
    source = (REPO / "benchmarks" / script).read_text()
    for old in ("esc_sweep.trainer", "esc_sweep.progress", "train_model"):
        assert old not in source, (script, old)


def test_throughput_calls_the_trainers_step():
    tree = ast.parse((REPO / "benchmarks" / "throughput.py").read_text())
    from_loop = {n for module, names, _ in _esc_sweep_imports(tree) if module == "esc_sweep.training.loop" for n in names}
    assert {"make_trainee", "train_step", "fit"} <= from_loop
