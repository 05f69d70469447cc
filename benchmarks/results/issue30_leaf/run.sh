#!/usr/bin/env bash
# LEAF vs the default front end, issue 30's setup (docs/models.md "Measured on CPU"), folds 1-5.
export ESC50_ROOT=/work/shared/esc50 OMP_NUM_THREADS=1
COMMON=("dataset.classes=[dog,rooster,rain,sea_waves,crying_baby]" "trainer.folds=[1,2,3,4,5]" trainer.epochs=8 trainer.num_threads=1 trainer.eval_batch_size=32 tracking=none trainer.progress=false trainer.train_eval_every=100 augmentation.crop_seconds=2.0)
run() { name=$1; shift; mkdir -p /work/runs30/$name; cd /work/runs30/$name; /usr/bin/time -f "%U user %S sys %e wall %M maxrss_kb" -o time.txt /work/wt-vl/.venv/bin/python -m esc_sweep "${COMMON[@]}" trainer.checkpoint_dir=/work/runs30/$name/ck "$@" > log.txt 2>&1; echo "$name rc=$?" >> /work/runs30/done.txt; }
run mel &
run leaf features=leaf &
wait
