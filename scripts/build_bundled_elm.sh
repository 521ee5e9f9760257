#!/usr/bin/env bash
# Builds assets/shapes-elm, the bundled ELM: a binary autoencoder (16 bits per latent cell, Bernoulli
# bits with the straight-through gradient, as ELM's BAE) on the shapes set at 64x64 (8x8 cells), read
# as 2 sub-tokens of 8 bits, and an ELM LM (width 256, 6 layers) over the Bernoulli-drawn bits (the
# official training data). Dropout 0: with attention dropout the CPU's fused attention kernel cannot run.
# Guidance 3 on the linear ramp (judged 57% at 10 per class) over the training default 1.5 (50%) and 5 (58%).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
argen train tokenizer --kind binary --bits 16 --token-each 2 --data shapes --preset small --resolution 64 \
  --steps 2000 --batch-size 16 --lr 2e-3 --warmup-steps 100 --sample-every 500 --checkpoint-every 500 \
  --out "$RUNS/shapes-bae16"
argen train generator --kind elm --tokenizer "$RUNS/shapes-bae16" --data shapes --resolution 64 --preset small \
  --steps 3000 --batch-size 32 --lr 1e-3 --warmup-steps 100 --dropout 0.0 --class-dropout 0.1 --cfg 1.5 \
  --sample-every 1000 --checkpoint-every 500 --out "$RUNS/shapes-elm"
python scripts/bundle_model.py "$RUNS/shapes-bae16" "$RUNS/shapes-elm" assets/shapes-elm \
  --script scripts/build_bundled_elm.sh --defaults '{"cfg_scale": 3.0}'
