#!/usr/bin/env bash
# Packaging check (run by .ci/run): build the wheel, install it into a fresh venv
# that is not the dev venv, and from a folder outside the repo compose a config,
# run a 1-epoch synthetic CV and ask predict for its help. Proves that a
# non-editable install (wheel, container image) carries its configs and works.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python="${PYTHON:-python3}"

echo "== wheel check: building the wheel"
"$python" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$repo" 2>/dev/null \
  || "$python" -m pip wheel -q --no-deps -w "$work/dist" "$repo"
wheel="$(ls "$work"/dist/esc_sweep-*.whl)"
yamls="$("$python" -m zipfile -l "$wheel" | grep -c 'esc_sweep/conf/.*\.yaml')"
echo "   $(basename "$wheel"): $yamls config files"
[ "$yamls" -gt 20 ] || { echo "wheel check: the wheel holds $yamls config files" >&2; exit 1; }

echo "== wheel check: installing into a fresh venv (constraints.txt)"
"$python" -m venv "$work/venv"
# pip's notes about this machine's extra package indexes go to a log, shown only on failure.
"$work/venv/bin/pip" install -q -c "$repo/constraints.txt" "$wheel" 2> "$work/pip.log" \
  || { cat "$work/pip.log" >&2; exit 1; }

mkdir "$work/run" && cd "$work/run"
export MLFLOW_TRACKING_URI= ESC_SWEEP_CACHE="$work/cache"
unset MLFLOW_TRACKING_URI
echo "== wheel check: esc-sweep --version"
"$work/venv/bin/esc-sweep" --version
echo "== wheel check: python -m esc_sweep --cfg job"
"$work/venv/bin/python" -m esc_sweep --cfg job model=resnet18 > cfg.txt
grep -q "name: resnet18" cfg.txt
echo "   composed $(wc -l < cfg.txt) lines"
echo "== wheel check: a 1-epoch synthetic 5-fold CV"
"$work/venv/bin/python" -m esc_sweep dataset=synthetic dataset.clips_per_class=8 dataset.clip_seconds=0.5 \
  features.n_mels=32 features.n_fft=256 model.width=8 augmentation=none trainer.epochs=1 \
  trainer.progress=false > cv.txt
tail -n 12 cv.txt
ls outputs/runs/*/*/results.json >/dev/null
ls mlruns/mlflow.db >/dev/null
echo "== wheel check: esc-sweep predict --help"
"$work/venv/bin/esc-sweep" predict --help | head -n 3
case "$(pwd)" in "$repo"*) echo "wheel check ran inside the repo" >&2; exit 1 ;; esac
"$work/venv/bin/python" -c "import esc_sweep, sys; p = esc_sweep.__file__; sys.exit(0 if p.startswith('$work/venv') else 'esc_sweep imported from ' + p)"
echo "== wheel check passed"
