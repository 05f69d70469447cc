"""Parallel folds against sequential folds, one process, one machine, one run.

    ESC50_ROOT=../shared/esc50 python benchmarks/parallel_folds.py experiment=quick_cpu trainer.epochs=5
    python benchmarks/parallel_folds.py --workers 2,5 experiment=quick_cpu   # try several worker counts

Any ``python -m esc_sweep`` override works. With the caches warmed first (one
untimed ``prepare``), it times ``cross_validate`` over the configured folds:

1. ``sequential``: one process, PyTorch's default thread count (all cores) -
   what a user gets without ``trainer.parallel_folds``;
2. ``parallel xN``: ``trainer.parallel_folds=N`` with ``trainer.num_threads=1``
   (one thread per worker process), for each N of ``--workers``;
3. ``reference``: the first fold alone, sequentially, with ``trainer.num_threads=1``:
   the per-fold metrics of every parallel run must equal it bit for bit (a fold's
   result depends on its seed and its thread count only, not on the scheduling).

It prints the wall times, the ratio parallel / sequential, and whether the
per-fold metrics match, and writes one JSON under benchmarks/results/.
Tracking is off (it is not what is measured); each run gets an empty
checkpoint folder, so nothing is resumed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import REPO, compose_config, fmt_table, load_average, machine_info, run_main, with_defaults, write_json
from esc_sweep.runtime import pick_device
from esc_sweep.training.cv import cross_validate
from esc_sweep.training.fold import prepare


def _timed_cv(overrides: list[str], checkpoint_dir: Path) -> tuple[float, list]:
    cfg = compose_config(overrides + [f"trainer.checkpoint_dir={checkpoint_dir}"])
    started = time.perf_counter()
    result = cross_validate(cfg)
    return time.perf_counter() - started, result.folds


def _metrics(fold) -> dict:
    history = [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in fold.history]
    return {"history": history, "confusion": fold.confusion, "val_acc": fold.val_acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="5", help="trainer.parallel_folds values to time, comma-separated")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    parser.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/parallel_folds_*.json)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    base = with_defaults(args.overrides, ["tracking.enabled=false", "trainer.progress=false"])

    cfg = compose_config(base)
    device = pick_device(cfg.trainer.device)
    prepare(cfg, device)  # warm the waveform and feature caches: every timed run below starts alike
    folds = list(cfg.trainer.folds)

    rows, runs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seconds, _ = _timed_cv(base, tmp / "sequential")
        runs["sequential"] = {"seconds": seconds, "threads": torch.get_num_threads()}
        one_thread = base + ["trainer.num_threads=1"]
        reference_seconds, reference = _timed_cv(one_thread + [f"trainer.folds=[{folds[0]}]"], tmp / "reference")
        runs["reference_fold"] = {"seconds": reference_seconds, "fold": folds[0], "threads": 1}
        for workers in [int(w) for w in args.workers.split(",")]:
            seconds, result = _timed_cv(one_thread + [f"trainer.parallel_folds={workers}"], tmp / f"p{workers}")
            identical = _metrics(result[0]) == _metrics(reference[0])
            runs[f"parallel_x{workers}"] = {
                "seconds": seconds,
                "ratio_to_sequential": seconds / runs["sequential"]["seconds"],
                "first_fold_identical_to_reference": identical,
                "val_acc": [f.val_acc for f in result],
                "val_acc_mean": statistics.fmean(f.val_acc for f in result),
            }
    for name, run in runs.items():
        rows.append([name, f"{run['seconds']:.1f}", f"{run.get('ratio_to_sequential', 1.0):.3f}"
                     if name != "reference_fold" else "-", run.get("first_fold_identical_to_reference", "-")])
    print(fmt_table(["run", "wall s", "ratio", "fold identical"], rows))
    payload = {
        "benchmark": "parallel_folds",
        "overrides": args.overrides,
        "folds": folds,
        "runs": runs,
        "load_average_after": load_average(),
        "machine": machine_info(device),
    }
    name = f"parallel_folds_{len(folds)}folds_{cfg.trainer.epochs}ep_{device.type}{args.tag}.json"
    print("wrote", write_json(args.out or REPO / "benchmarks" / "results" / name, payload))


if __name__ == "__main__":
    run_main(main)
