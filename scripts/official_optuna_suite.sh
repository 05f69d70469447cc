#!/usr/bin/env bash
# Run hydra-optuna-sweeper's own test suite (1.4.0rc3 sdist) against the official
# sweeper (control) and against esc_optuna, and print one summary line per sweeper
# plus each failing test. Same code as tests/sweep/test_official_optuna_suite.py.
#
#   scripts/official_optuna_suite.sh                      # both sweepers
#   scripts/official_optuna_suite.sh --sweeper esc_optuna  # one of them
#   scripts/official_optuna_suite.sh --keep /tmp/suite -v  # keep the extracted trees, show pytest output
#
# Needs the pip registry (the sdist; cached in .cache/official-optuna-suite/) and either
# raw.githubusercontent.com or OFFICIAL_OPTUNA_ASSETS=<hydra checkout> for the suite's
# example/ and tests/conf/ folders, which the sdist lacks. Exit status 1 when a sweeper
# fails a test other than the known asset drift. PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
exec "$PYTHON" tests/sweep/test_official_optuna_suite.py "$@"
