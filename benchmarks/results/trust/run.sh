#!/bin/bash
# The real-data demonstrations of docs/compare.md (issue 25), as they were run on 2026-12-06 from /tmp/trust
# on the 2-core development CPU. Outputs: compare*.txt / compare*.json / nested_5classes.json beside this file.
set -x
export ESC50_ROOT=/work/shared/esc50 OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
ES=/work/main/.venv/bin/esc-sweep
FIVE='dataset.classes=[dog,rooster,rain,sea_waves,crying_baby]'
COMMON="trainer.epochs=4 trainer.num_threads=1 trainer.progress=false"

# 1. three real 5-fold runs on 5 classes, 4 epochs, and a run on other data (ESC-10)
$PY -m esc_sweep "$FIVE" $COMMON hydra.run.dir=runs/default
$PY -m esc_sweep "$FIVE" $COMMON augmentation.mixup_alpha=0 hydra.run.dir=runs/no_mixup
$PY -m esc_sweep "$FIVE" $COMMON features.normalize=dataset hydra.run.dir=runs/normalize_dataset
$PY -m esc_sweep dataset=esc10 trainer.epochs=1 trainer.num_threads=1 trainer.progress=false hydra.run.dir=runs/esc10
$ES compare runs/default runs/no_mixup > compare.txt
$ES compare runs/default runs/no_mixup --format json > compare.json
$ES compare runs/default runs/normalize_dataset > compare2.txt
$ES compare runs/default runs/normalize_dataset --format json > compare2.json
$ES compare runs/default runs/esc10 > compare_refused.txt 2>&1   # exit 2, one line

# 2. the sweep of issue 25, then on other data (a study of its own), then an explicit name on other data (refused)
$PY -m esc_sweep -m hparams_search=esc50_optuna hydra.sweeper.n_trials=2 trainer.epochs=2 'trainer.folds=[1]' "$FIVE" trainer.progress=false
$PY -m esc_sweep -m hparams_search=esc50_optuna hydra.sweeper.n_trials=3 trainer.epochs=1 'trainer.folds=[1]' dataset=esc10 trainer.progress=false
$PY -m esc_sweep -m hparams_search=esc50_optuna hydra.sweeper.n_trials=3 trainer.epochs=1 'trainer.folds=[1]' dataset=esc10 trainer.progress=false hydra.sweeper.study_name=esc50_optuna

# 3. nested CV on the 5 classes: 5 outer folds, 3 trials each (n_mels fixed, eval batches of 64: ~4 GB a trial)
$ES nested hparams_search=esc50_optuna "$FIVE" hydra.sweeper.n_trials=3 features.n_mels=64 trainer.eval_batch_size=64 $COMMON
