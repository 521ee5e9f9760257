#!/usr/bin/env bash
# Builds the bundled distilled-decoding students assets/shapes-llamagen-dd and assets/shapes-var-dd from
# the bundled teachers on the CPU: (noise, tokens) pairs from each teacher's exact flow sampler, then the
# student (initialised from its teacher) trained on them. The two runs go side by side, one core each
# (OMP_NUM_THREADS=1; on 2 quiet cores the pairs take about 13 min, the training about 65 min for LlamaGen
# and 75 min for VAR), then the model cards (scripts/bundle_model.py) with the students' class accuracy and
# shapes FD at 1 and 2 steps next to their teachers'.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
OMP_NUM_THREADS=1 argen train dd --teacher shapes-llamagen --pairs 12288 --steps 4000 --batch-size 32 --lr 1e-3 \
  --warmup-steps 100 --checkpoint-every 500 --out "$RUNS/llamagen-dd" --quiet &
OMP_NUM_THREADS=1 argen train dd --teacher shapes-var --pairs 8192 --steps 2000 --batch-size 32 --lr 1e-3 \
  --warmup-steps 100 --checkpoint-every 500 --out "$RUNS/var-dd" --quiet &
wait
python scripts/bundle_model.py assets/shapes-llamagen/tokenizer "$RUNS/llamagen-dd" assets/shapes-llamagen-dd \
  --script scripts/build_bundled_dd.sh
python scripts/bundle_model.py assets/shapes-var/tokenizer "$RUNS/var-dd" assets/shapes-var-dd \
  --script scripts/build_bundled_dd.sh
