#!/usr/bin/env bash
# Rebuilds the bundled default model assets/shapes-llamagen from scratch on the CPU (about 60 min
# on 2 cores): a VQ tokenizer and a LlamaGen-style GPT trained on the shapes set at 64x64, then the
# model card with the final losses, timings, a sample grid and the class accuracy of its samples.
# NOTE: the shipped assets/shapes-llamagen was built by this script as of commit a3b1615 (continuous
# colours, 48.5% class accuracy with the robust judge); the recipe below (6-colour palette, 512 codes,
# 3000 steps) gave 40% and was not shipped: see issue 3's notes (tokenizer code multiplicity).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
argen train tokenizer --data shapes --preset small --resolution 64 --steps 1600 --batch-size 16 \
  --lr 2e-3 --warmup-steps 100 --codebook-size 512 --dead-code-threshold 0 --sample-every 400 --checkpoint-every 400 --out "$RUNS/shapes-vq"
argen train generator --tokenizer "$RUNS/shapes-vq" --data shapes --preset small --resolution 64 \
  --steps 3000 --batch-size 32 --lr 1e-3 --warmup-steps 100 --dropout 0.0 --class-dropout 0.1 \
  --cfg 3.0 --sample-every 500 --checkpoint-every 500 --out "$RUNS/shapes-llamagen"
python scripts/bundle_model.py "$RUNS/shapes-vq" "$RUNS/shapes-llamagen" assets/shapes-llamagen
