#!/usr/bin/env bash
# One-shot GPU check (issue 16), for the device tool's machine; writes one JSON.
#
#   bash benchmarks/gpu_check.sh                    # on the GPU machine (about 6-8 minutes)
#   DEVICE=cpu STEPS=3 SHORT=1 bash benchmarks/gpu_check.sh   # a dry pass of the script itself on a CPU
#
# Needs the real data beside the tree: ESC50_ROOT (default ../shared/esc50, or data/esc50 when carried).
# Runs: the throughput benchmark (model only, esc_sweep pipeline, DataLoader baseline) for baseline_cnn and
# resnet18 at 128 mels, then a 1-fold resnet18 short run with bf16 + channels_last, with and without
# torch.compile, then all 5 folds of the same short run sequentially and with trainer.parallel_folds=5
# (five fold processes sharing the one GPU; benchmarks/parallel_folds.py prints the ratio).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
DEVICE="${DEVICE:-cuda}"
STEPS="${STEPS:-50}"
EPOCHS="${EPOCHS:-3}"
OUT="${OUT:-benchmarks/results/gpu_check_$(date -u +%Y%m%d).json}"
if [ -z "${ESC50_ROOT:-}" ]; then
  for candidate in data/esc50 ../shared/esc50; do
    [ -f "$candidate/meta/esc50.csv" ] && export ESC50_ROOT="$(cd "$candidate" && pwd)" && break
  done
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
status=0

run() {  # run NAME CMD...: time it, keep its last lines and exit status
  local name="$1"; shift
  local t0=$(date +%s)
  "$@" > "$work/$name.log" 2>&1
  local rc=$?
  [ $rc -ne 0 ] && status=1
  printf '{"name": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$work/runs.jsonl"
  echo "== $name: exit $rc in $(( $(date +%s) - t0 )) s"; tail -n 12 "$work/$name.log"
}

MEL128="features.n_mels=128 trainer.device=$DEVICE"
run throughput_baseline_cnn "$PY" benchmarks/throughput.py model=baseline_cnn $MEL128 --device "$DEVICE" \
  --steps "$STEPS" --out "$work/throughput_baseline_cnn.json"
run throughput_resnet18 "$PY" benchmarks/throughput.py model=resnet18 $MEL128 --device "$DEVICE" \
  --steps "$STEPS" --out "$work/throughput_resnet18.json"
FOLD1="model=resnet18 $MEL128 trainer.folds=[1] trainer.epochs=$EPOCHS trainer.amp=true trainer.channels_last=true \
  tracking.enabled=false trainer.progress=false trainer.checkpoint_dir=$work/ck"
[ -n "${SHORT:-}" ] && FOLD1="$FOLD1 dataset.classes=[dog,rooster,rain,crying_baby,clock_tick]"
run fold1_resnet18_bf16 "$PY" -m esc_sweep $FOLD1 hydra.run.dir="$work/run_eager"
run fold1_resnet18_bf16_compile "$PY" -m esc_sweep $FOLD1 trainer.compile=true hydra.run.dir="$work/run_compile"
PARALLEL="model=resnet18 $MEL128 trainer.epochs=$EPOCHS trainer.amp=true trainer.channels_last=true"
[ -n "${SHORT:-}" ] && PARALLEL="$PARALLEL dataset.classes=[dog,rooster,rain,crying_baby,clock_tick]"
run parallel_folds "$PY" benchmarks/parallel_folds.py --workers 5 --out "$work/parallel_folds.json" $PARALLEL

"$PY" - "$work" "$OUT" "$started" <<'PYEOF'
import json, pathlib, platform, subprocess, sys, time
work, out, started = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
def load(path):
    try:
        return json.loads(path.read_text())
    except Exception:
        return None
import torch
result = {
    "date": time.strftime("%Y-%m-%d"),
    "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
    "torch": torch.__version__,
    "runs": [json.loads(line) for line in (work / "runs.jsonl").read_text().splitlines()],
    "throughput": {p.stem: load(p) for p in sorted(work.glob("throughput_*.json"))},
    "fold1": {d.name: load(d / "results.json") for d in sorted(work.glob("run_*"))},
    "parallel_folds": load(work / "parallel_folds.json"),
    "seconds": int(time.time()) - started,
}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(result, indent=2, default=str))
print(f"wrote {out} ({result['seconds']} s)")
PYEOF
exit $status
