#!/usr/bin/env bash
# The first-run command: sets everything up on a fresh machine (scripts/setup.sh), then generates a
# grid of all 10 classes with the bundled default model, offline, into argen_samples.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 "${ARGEN_VENV:-.venv}/bin/argen" generate --out argen_samples.png "$@"
