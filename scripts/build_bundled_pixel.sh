#!/usr/bin/env bash
# Builds assets/shapes-pixel, the bundled pixel-wise model: a 16-colour palette fitted by k-means on the
# shapes set at 32x32, and a class-conditional image-GPT (width 128, 4 layers) over its 1,024 pixel ids.
# Dropout 0: with attention dropout the CPU's fused attention kernel cannot run and a step takes 5x longer.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
argen train tokenizer --kind palette --data shapes --resolution 32 --codebook-size 16 --seed 0 \
  --out "$RUNS/shapes-palette16"
argen train generator --kind pixel --tokenizer "$RUNS/shapes-palette16" --data shapes --resolution 32 \
  --preset small --steps 2500 --batch-size 16 --lr 1e-3 --warmup-steps 100 --dropout 0.0 --class-dropout 0.1 \
  --cfg 1.5 --sample-every 500 --checkpoint-every 250 --out "$RUNS/shapes-pixel"
# guidance 4 (judged 20% at 10 per class) over the training default 1.5 (12%) and 7 (14%)
python scripts/bundle_model.py "$RUNS/shapes-palette16" "$RUNS/shapes-pixel" assets/shapes-pixel \
  --script scripts/build_bundled_pixel.sh --defaults '{"cfg_scale": 4.0}'
