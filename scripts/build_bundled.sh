#!/usr/bin/env bash
# Rebuilds the bundled default model assets/shapes-llamagen from scratch on the CPU (about 2 h on 2
# quiet cores): a VQ tokenizer (512 codes, no dead-code restarts) and a LlamaGen-style GPT trained on the
# shapes set at 64x64 (3000 steps, then resumed to 6000: the cosine schedule restarts over 6000 steps,
# as it was run; then 5000 more steps from its weights on new images, --seed 1), then the model card
# with the final losses, timings, a sample grid and the class accuracy of its samples. Run it alone:
# a second CPU-heavy job slows a 2-thread training several times.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
argen train tokenizer --data shapes --preset small --resolution 64 --steps 1600 --batch-size 16 \
  --lr 2e-3 --warmup-steps 100 --codebook-size 512 --dead-code-threshold 0 --sample-every 400 --checkpoint-every 400 --out "$RUNS/shapes-vq"
argen train generator --tokenizer "$RUNS/shapes-vq" --data shapes --preset small --resolution 64 \
  --steps 3000 --batch-size 32 --lr 1e-3 --warmup-steps 100 --dropout 0.0 --class-dropout 0.1 \
  --cfg 3.0 --sample-every 500 --checkpoint-every 500 --out "$RUNS/shapes-llamagen"
argen train generator --tokenizer "$RUNS/shapes-vq" --data shapes --preset small --resolution 64 \
  --steps 6000 --batch-size 32 --lr 1e-3 --warmup-steps 100 --dropout 0.0 --class-dropout 0.1 \
  --cfg 3.0 --sample-every 1000 --checkpoint-every 500 --resume --out "$RUNS/shapes-llamagen"
argen train generator --tokenizer "$RUNS/shapes-vq" --data shapes --preset small --resolution 64 \
  --steps 5000 --batch-size 32 --lr 5e-4 --warmup-steps 100 --dropout 0.0 --class-dropout 0.1 --seed 1 \
  --cfg 1.5 --sample-every 1000 --checkpoint-every 500 --init-from "$RUNS/shapes-llamagen" --out "$RUNS/shapes-llamagen-ft"
python scripts/bundle_model.py "$RUNS/shapes-vq" "$RUNS/shapes-llamagen-ft" assets/shapes-llamagen
