#!/usr/bin/env bash
# Sets up argen on a fresh machine: a virtualenv (.venv, or $ARGEN_VENV) with the pinned torch and
# argen installed editable with its dev extras. Idempotent; source it or run it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
VENV=${ARGEN_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q -e ".[dev]"
