"""A tiny Hydra app (not esc_sweep) for sweeper tests: written into a test's tmp_path,
run with ``python app.py -m ...`` in a subprocess.

Its config has no ``sweep`` node, so esc_optuna treats it as any other Hydra app
(compat mode unless told otherwise). ``mode`` picks what a job does:

* ``ok``: return ``x**2 + y``;
* ``pair``: return ``(x**2, (y - 1)**2)`` (two objectives);
* ``fail``: raise ``RuntimeError("cfg.mode is fail")``;
* ``fail_y1``: raise when ``y == 1``, else ``ok``;
* ``none_y1``: return None when ``y == 1``, else ``ok``.

Each job writes ``job.json`` (pid, parameters) into its output folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[2]

APP = '''
import json
import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(config_path=".", config_name="config")
def main(cfg: DictConfig):
    assert "sweep" not in cfg, "esc_optuna added keys to another app's config"
    out = HydraConfig.get().runtime.output_dir
    with open(os.path.join(out, "job.json"), "w") as handle:
        json.dump({"pid": os.getpid(), "x": cfg.x, "y": cfg.y}, handle)
    if cfg.mode == "fail" or (cfg.mode == "fail_y1" and cfg.y == 1):
        raise RuntimeError("cfg.mode is fail")
    if cfg.mode == "none_y1" and cfg.y == 1:
        return None
    if cfg.mode == "pair":
        return cfg.x ** 2, (cfg.y - 1) ** 2
    return cfg.x ** 2 + cfg.y


if __name__ == "__main__":
    main()
'''

CONFIG = '''
defaults:
  - override hydra/sweeper: esc_optuna

x: 1.0
y: 1
mode: ok

hydra:
  sweeper:
    sampler:
      seed: 7
    n_trials: 6
    n_jobs: 1
    params:
      x: interval(-2.0, 2.0)
      y: choice(0, 1, 2)
'''

# The plugin lives in <repo>/hydra_plugins; an installed package finds it anyway.
ENV = {
    **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    "PYTHONUNBUFFERED": "1",
}


def write_app(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(APP)
    (folder / "config.yaml").write_text(CONFIG)
    return folder


def run_app(folder: Path, *overrides: str, sweep_dir: Path | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess:
    """``python app.py -m <overrides>`` in ``folder``; asserts exit 0 unless ``check=False``."""
    sweep_dir = sweep_dir or folder / "multirun"
    out = subprocess.run([sys.executable, "app.py", "-m", f"hydra.sweep.dir={sweep_dir}", *overrides],
                         cwd=folder, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def load(storage: str, study_name: str) -> optuna.Study:
    """A study from any storage URL esc_optuna takes (journal:// included)."""
    from esc_sweep.sweep.storage import open_storage

    return optuna.load_study(study_name=study_name, storage=open_storage(storage))


def trials(storage: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    return load(storage, study_name).get_trials(deepcopy=False)


def signature(trials_: list[optuna.trial.FrozenTrial]) -> list[tuple]:
    """(state, params) of each trial, in order; floats rounded (sub-ulp noise aside)."""
    return [(t.state.name, tuple(sorted((k, round(v, 9) if isinstance(v, float) else v)
                                        for k, v in t.params.items()))) for t in trials_]


def error_line(out: subprocess.CompletedProcess) -> str:
    """The one ``error: ...`` line of a command that failed with exit 2, without a traceback."""
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0]
