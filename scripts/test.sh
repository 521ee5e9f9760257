#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine (scripts/setup.sh) and runs the test
# suite. Extra arguments go to pytest. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${ARGEN_VENV:-.venv}/bin/ruff" check .  # style: pyproject.toml's [tool.ruff] (line length, import order, pyflakes)
# pytest's own entry point, not `python -m pytest`: the latter puts the repository root on sys.path, where its
# tokenizers/ and samplers/ folders (installed as argen.tokenizers / argen.samplers) would shadow Hugging Face's
# `tokenizers`, which transformers imports
"${ARGEN_VENV:-.venv}/bin/pytest" -q "$@"
