#!/usr/bin/env bash
# The GPU check, one command on a CUDA machine (benchmarks/gpu_check.py says what it runs):
#   the official-fixture and compiled-decode tests on CUDA (float32 with the CPU tolerances, bfloat16
#   with its own), every attention kernel against the math backend, and the speed benchmarks
#   (GPT-B / GPT-XL at 576 tokens, batch 1 and 8, eager vs compiled vs official-style, bf16 and float32;
#   VAR-d16, MAR-B, FlowAR-S; random weights) -> one JSON (default benchmarks/results/gpu_check.json).
#
#   scripts/gpu_check.sh [--out FILE] [--sections tests attention ar families] [--budget-s 540] [--dry-run]
#
# Without CUDA it stops with a one-line reason (exit 2); --dry-run runs every section on the CPU at toy
# sizes. Exit 0: every check passed; 1: a failure (details in the JSON). Python: $PYTHON, else .venv's,
# else python3; argen is installed into it (editable, no dependencies) if it is not importable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import argen.samplers" >/dev/null 2>&1; then
  echo "gpu_check: argen is not importable with $PY; installing it (pip install -e . --no-deps)" >&2
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    || { echo "gpu_check: could not install argen into $PY; install it first (scripts/setup.sh)" >&2; exit 2; }
fi
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
