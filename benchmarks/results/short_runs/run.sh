#!/usr/bin/env bash
# Issue 27: do the defaults learn at least as fast as the old ones? Paired by fold, with intervals.
#   A  the default (features.normalize=instance), this code
#   B  the old default's normalisation (features.normalize=dataset), this code
#   C  the old default as it was: features.normalize=dataset on the code before the batch-norm
#      recalibration (8fb6ee0, checked out in OLD_TREE with its own venv)
# ESC-10 (dataset=esc10), 5 folds, 8 epochs, seed 0; then A vs B at the default 30 epochs on fold 1.
# Each run is one process with one thread; A and B (then C) run side by side on the 2-core machine.
# Usage: ESC50_ROOT=... OLD_TREE=/work/wt-old bash benchmarks/results/short_runs/run.sh OUT_DIR [8|30]
set -euo pipefail
out=${1:?output folder}; budget=${2:-8}
repo=${REPO:-$(cd "$(dirname "$0")/../../.." && pwd)}  # REPO: a frozen checkout to run from
mkdir -p "$out"
common=(tracking=none trainer.num_threads=1 trainer.progress=false trainer.eval_batch_size=64
        dataset=esc10)
if [ "$budget" = 8 ]; then
  common+=(trainer.epochs=8 'trainer.folds=[1,2,3,4,5]' trainer.keep_fold_models=true)
else
  common+=(trainer.epochs=30 'trainer.folds=[1]')
fi
run() {  # run NAME PYTHON_TREE OVERRIDES...
  local name=$1 tree=$2; shift 2
  mkdir -p "$out/$name"
  (cd "$out/$name" && OMP_NUM_THREADS=1 "$tree/.venv/bin/python" -m esc_sweep "${common[@]}" \
      "trainer.checkpoint_dir=$out/$name/checkpoints" "$@" > log.txt 2>&1)
}
run "A_instance_${budget}ep" "$repo" &
run "B_dataset_${budget}ep" "$repo" features.normalize=dataset &
wait
if [ "$budget" = 8 ] && [ -n "${OLD_TREE:-}" ]; then
  run "C_dataset_before_fix_${budget}ep" "$OLD_TREE" features.normalize=dataset
fi
