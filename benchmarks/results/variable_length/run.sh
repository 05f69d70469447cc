#!/usr/bin/env bash
# Issue 29: short variable-length clips, zero-padded (pad) or repeated (repeat)? Paired by fold, with intervals.
# Data: ESC-10 with each clip's leading/trailing digital silence cut (benchmarks/variable_length_esc10.py):
# 400 real clips of 0.3-5 s, the official folds. dataset.variable_length=true, 2.5 s windows, so clips
# under 2.5 s (15 % of them) are filled, longer ones cropped in training and averaged over windows in
# evaluation. experiment=quick_cpu (resnet10t) for 20 epochs, 5 folds, seed 0, one thread per run,
# the two runs side by side on the 2-core machine.
# Usage: ESC50_ROOT=... bash benchmarks/results/variable_length/run.sh OUT_DIR
set -euo pipefail
out=${1:?output folder}
repo=${REPO:-$(cd "$(dirname "$0")/../../.." && pwd)}  # REPO: a frozen checkout to run from
py="$repo/.venv/bin/python"
mkdir -p "$out"
[ -f "$out/data/meta.csv" ] || "$py" "$repo/benchmarks/variable_length_esc10.py" "$out/data"
common=(experiment=quick_cpu dataset=folder "dataset.root=$out/data" dataset.csv=meta.csv
        dataset.variable_length=true dataset.clip_seconds=2.5 augmentation.crop_seconds=0
        trainer.epochs=20 'trainer.folds=[1,2,3,4,5]' tracking=none trainer.num_threads=1
        trainer.progress=false trainer.eval_batch_size=64)
run() {  # run NAME OVERRIDES...
  local name=$1; shift
  mkdir -p "$out/$name"
  (cd "$out/$name" && OMP_NUM_THREADS=1 "$py" -m esc_sweep "${common[@]}" \
      "trainer.checkpoint_dir=$out/$name/checkpoints" "$@" > log.txt 2>&1)
}
run pad dataset.short_clips=pad &
run repeat dataset.short_clips=repeat &
wait
"$repo/.venv/bin/esc-sweep" compare "$out"/pad/outputs/runs/*/* "$out"/repeat/outputs/runs/*/* --format json \
  > "$out/compare_pad_vs_repeat.json"
"$repo/.venv/bin/esc-sweep" compare "$out"/pad/outputs/runs/*/* "$out"/repeat/outputs/runs/*/*
