#!/bin/bash
# Real-data demonstrations for the trust issue (issue 25). Run from /tmp/trust.
set -x
export ESC50_ROOT=/work/shared/esc50 OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
ES=/work/main/.venv/bin/esc-sweep
FIVE='dataset.classes=[dog,rooster,rain,sea_waves,crying_baby]'
cd /tmp/trust
date
# 1. two real 5-fold runs on 5 classes, 4 epochs: default vs mixup off
$PY -m esc_sweep "$FIVE" trainer.epochs=4 trainer.num_threads=1 trainer.progress=false hydra.run.dir=runs/default > runs_default.log 2>&1
$PY -m esc_sweep "$FIVE" trainer.epochs=4 trainer.num_threads=1 trainer.progress=false augmentation.mixup_alpha=0 hydra.run.dir=runs/no_mixup > runs_no_mixup.log 2>&1
$PY -m esc_sweep dataset=esc10 trainer.epochs=1 'trainer.folds=[1,2,3,4,5]' trainer.num_threads=1 trainer.progress=false hydra.run.dir=runs/esc10 > runs_esc10.log 2>&1
$ES compare runs/default runs/no_mixup > compare.txt 2>&1
$ES compare runs/default runs/no_mixup --format json > compare.json 2>compare_json.err
$ES compare runs/default runs/esc10 > compare_refused.txt 2>&1; echo "rc=$?" >> compare_refused.txt
date
# 2. the sweep of issue 25, then on other data, then an explicit name on other data
$PY -m esc_sweep -m hparams_search=esc50_optuna hydra.sweeper.n_trials=2 trainer.epochs=2 'trainer.folds=[1]' "$FIVE" trainer.progress=false > sweep_5classes.log 2>&1
$PY -m esc_sweep -m hparams_search=esc50_optuna hydra.sweeper.n_trials=3 trainer.epochs=1 'trainer.folds=[1]' dataset=esc10 trainer.progress=false > sweep_esc10.log 2>&1
$PY -m esc_sweep -m hparams_search=esc50_optuna hydra.sweeper.n_trials=3 trainer.epochs=1 'trainer.folds=[1]' dataset=esc10 trainer.progress=false hydra.sweeper.study_name=esc50_optuna > sweep_explicit.log 2>&1; echo "rc=$?" >> sweep_explicit.log
date
# 3. nested CV on 5 real classes, 5 outer folds, 3 trials each, 4 epochs
$ES nested hparams_search=esc50_optuna "$FIVE" hydra.sweeper.n_trials=3 trainer.epochs=4 trainer.num_threads=1 trainer.progress=false > nested.log 2>&1
date
#!/bin/bash
# A decisive comparison for docs/compare.md: per-clip vs dataset normalisation, 5 classes, 5 folds, 4 epochs.
set -x
while pgrep -f "trust/run.sh" > /dev/null; do sleep 20; done
export ESC50_ROOT=/work/shared/esc50 OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
ES=/work/main/.venv/bin/esc-sweep
FIVE='dataset.classes=[dog,rooster,rain,sea_waves,crying_baby]'
cd /tmp/trust
date
$PY -m esc_sweep "$FIVE" trainer.epochs=4 trainer.num_threads=1 trainer.progress=false features.normalize=dataset hydra.run.dir=runs/normalize_dataset > runs_normalize_dataset.log 2>&1
$ES compare runs/default runs/normalize_dataset > compare2.txt 2>&1
$ES compare runs/default runs/normalize_dataset --format json > compare2.json 2>&1
date
#!/bin/bash
# Nested CV on 5 real ESC-50 classes: 5 outer folds, 3 trials each, 4 epochs; n_mels fixed at 64 and
# evaluation batches of 64 to keep a trial's memory near 4 GB (the machine is shared).
set -x
export ESC50_ROOT=/work/shared/esc50 OMP_NUM_THREADS=1
ES=/work/main/.venv/bin/esc-sweep
cd /tmp/trust
date
$ES nested hparams_search=esc50_optuna 'dataset.classes=[dog,rooster,rain,sea_waves,crying_baby]' hydra.sweeper.n_trials=3 trainer.epochs=4 features.n_mels=64 trainer.eval_batch_size=64 trainer.num_threads=1 trainer.progress=false > nested2.log 2>&1
echo "rc=$?"
date
