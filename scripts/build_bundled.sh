#!/usr/bin/env bash
# Rebuilds the bundled default model assets/shapes-llamagen from scratch on the CPU (about 1 h 45 min
# on 2 quiet cores): a VQ tokenizer with the patch-local encoder (512 codes, no dead-code restarts) and
# a LlamaGen-style GPT trained on the shapes set at 64x64 (6000 steps, then 4000 more from its weights
# on new images at half the learning rate, --seed 1), then the model card with the final losses,
# timings, a sample grid and the class accuracy of its samples. Run it alone: a second CPU-heavy job
# slows a 2-thread training several times.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
argen train tokenizer --data shapes --preset small --resolution 64 --steps 2000 --batch-size 16 \
  --lr 2e-3 --warmup-steps 100 --codebook-size 512 --dead-code-threshold 0 --encoder patch \
  --sample-every 500 --checkpoint-every 500 --out "$RUNS/vq-patch"
argen train generator --tokenizer "$RUNS/vq-patch" --data shapes --preset small --resolution 64 \
  --steps 6000 --batch-size 32 --lr 1e-3 --warmup-steps 100 --dropout 0.0 --class-dropout 0.1 \
  --cfg 1.5 --sample-every 1000 --checkpoint-every 500 --out "$RUNS/gpt-patch"
argen train generator --tokenizer "$RUNS/vq-patch" --data shapes --preset small --resolution 64 \
  --steps 4000 --batch-size 32 --lr 5e-4 --warmup-steps 100 --dropout 0.0 --class-dropout 0.1 --seed 1 \
  --cfg 1.5 --sample-every 1000 --checkpoint-every 500 --init-from "$RUNS/gpt-patch" --out "$RUNS/gpt-patch-ft"
python scripts/bundle_model.py "$RUNS/vq-patch" "$RUNS/gpt-patch-ft" assets/shapes-llamagen
