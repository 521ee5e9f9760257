#!/usr/bin/env bash
# Builds assets/shapes-mar-draft, the bundled draft model for continuous speculative decoding (argen sampler
# cspd) with the bundled target assets/shapes-mar: a MAR 4x narrower and half as deep (encoder/decoder 2+2
# blocks of width 128, diffusion head 2 x 128) trained on the target's own KL VAE latents, with the target's
# head chain (linear schedule, 50 reverse steps) so that the two chains can share their noise. One core
# (OMP_NUM_THREADS=1), so that the machine's other core stays usable.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} argen train generator --kind mar --tokenizer assets/shapes-mar/tokenizer \
  --latents mean --data shapes --preset small --resolution 64 --dim 128 --depth 2 --heads 4 \
  --config diffloss_w=128 diffloss_d=2 --steps 5000 --batch-size 32 --lr 1e-3 --warmup-steps 100 --dropout 0.0 \
  --class-dropout 0.1 --cfg 3.0 --sample-every 1000 --checkpoint-every 500 --out "$RUNS/shapes-mar-draft"
python scripts/bundle_model.py assets/shapes-mar/tokenizer "$RUNS/shapes-mar-draft" assets/shapes-mar-draft \
  --script scripts/build_bundled_cspd.sh \
  --defaults '{"order": "random", "num_iter": 64, "cfg_scale": 4.0, "cfg_schedule": "constant", "temperature": 1.0}'
