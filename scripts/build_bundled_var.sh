#!/usr/bin/env bash
# Builds the bundled scale-wise model assets/shapes-var from scratch on the CPU (about 2 h 25 min on 2
# quiet cores): VAR's multi-scale VQ-VAE with the patch-local encoder (a flat colour gets one code)
# and a small VAR transformer trained on the shapes set at 64x64 (scales 1, 2, 3, 4, 5, 6, 8; 3000
# steps, then four continuations from the previous weights on new images at half the learning rate:
# 2000, 2000, 3000, 3000 steps, --seed 1 .. 4), then the model card with losses,
# timings, samples and class accuracy. Run it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
argen train tokenizer --kind multiscale --data shapes --preset small --resolution 64 --steps 2000 --batch-size 16 \
  --lr 2e-3 --warmup-steps 100 --codebook-size 512 --dead-code-threshold 0 --encoder patch \
  --sample-every 500 --checkpoint-every 500 --out "$RUNS/msvq-patch"
argen train generator --kind var --tokenizer "$RUNS/msvq-patch" --data shapes --preset small --resolution 64 \
  --steps 3000 --batch-size 16 --lr 1e-3 --warmup-steps 100 --dropout 0.0 --class-dropout 0.1 \
  --cfg 3.0 --sample-every 1000 --checkpoint-every 500 --out "$RUNS/var-patch"
# continuations from the previous run's weights on new images (--seed k) at half the learning rate
prev=var-patch
steps=(0 2000 2000 3000 3000)
for k in 1 2 3 4; do
  out=var-patch-ft$k; [ $k -eq 1 ] && out=var-patch-ft
  argen train generator --kind var --tokenizer "$RUNS/msvq-patch" --data shapes --preset small --resolution 64 \
    --steps ${steps[$k]} --batch-size 16 --lr 5e-4 --warmup-steps 100 --dropout 0.0 --class-dropout 0.1 --seed $k \
    --cfg 3.0 --sample-every 1000 --checkpoint-every 500 --init-from "$RUNS/$prev" --out "$RUNS/$out"
  prev=$out
done
python scripts/bundle_model.py "$RUNS/msvq-patch" "$RUNS/var-patch-ft4" assets/shapes-var --script scripts/build_bundled_var.sh
