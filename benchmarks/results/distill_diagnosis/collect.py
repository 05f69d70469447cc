"""Writes benchmarks/results/distill_esc10_diagnosis.json from the runs' results.json and esc-sweep compare.

Usage: python collect.py <diag.json> name=<run folder>::<command> ... > out.json
(the first run is the baseline every other one is compared with).
"""
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

diag = json.loads(Path(sys.argv[1]).read_text())
runs = {}
for arg in sys.argv[2:]:
    name, rest = arg.split("=", 1)
    folder, command = rest.split("::", 1)
    results = json.loads((Path(folder) / "results.json").read_text())
    folds = {f["fold"]: f["val_acc"] for f in results["folds"]}
    runs[name] = {"command": command, "folder": folder, "mlflow_run_id": results.get("mlflow_run_id"),
                  "val_acc_by_fold": folds, "mean_val_acc": sum(folds.values()) / len(folds),
                  "train_acc_by_fold": {f["fold"]: f.get("train_acc") for f in results["folds"]},
                  "seconds": results.get("seconds"), "distill": results.get("distill")}
names = list(runs)
compare = {}
for other in names[1:]:
    for base in names[:1] + (["plain_ls02"] if other != "plain_ls02" and "plain_ls02" in runs else []):
        if base == other:
            continue
        out = subprocess.run(["esc-sweep", "compare", "--format", "json", runs[base]["folder"], runs[other]["folder"]],
                             capture_output=True, text=True, check=True)
        compare[f"{other} - {base}"] = json.loads(out.stdout)
git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
print(json.dumps({
    "benchmark": "distillation diagnosis",
    "what": "why a resnet10t fold ensemble (85.2 %) made a baseline_cnn width 16 student worse on ESC-10",
    "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                "cpu_count": 2, "git_commit": git, "device": "cpu"},
    "data": {"ESC50_ROOT": "/work/shared/esc50", "copy": "reduced-fidelity 16 kHz ESC-50", "dataset": "esc10"},
    "teacher_diagnosis": diag,
    "runs": runs,
    "compare": compare,
}, indent=1))
