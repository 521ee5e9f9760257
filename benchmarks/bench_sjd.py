"""SJD against plain AR: the numbers quoted for issue 5, through ``argen bench``'s own code.

    python benchmarks/bench_sjd.py [--quick] [--out benchmarks/results/sjd.json]

1. the bundled shapes-llamagen (the targets: batch 1, step compression and wall-clock speed-up), at
   batch 1 and 8, SJD with each draft init;
2. LlamaGen GPT-B (256 tokens) with random weights, batch 1 and 8, for reference (a random model is
   near-uniform, so drafts are rarely accepted: this measures the cost of a wide pass, not the gain).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import argen
from argen.bench import format_table, run_bench

# (model, random weights, samplers, batch sizes, repeats, warm-up)
SUITE = [
    ("shapes-llamagen", False, ["sjd", "sjd:window=8", "sjd:window=4", "sjd:init=repeat-above", "sjd:init=random",
                                "sjd:coupled=false"], [1, 8], 10, True),
    ("llamagen-gpt-b", True, ["sjd"], [1, 8], 1, False),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="only the bundled model at batch 1")
    p.add_argument("--out", default="benchmarks/results/sjd.json")
    args = p.parse_args()
    reports = []
    for name, random_weights, samplers, batches, repeats, warmup in SUITE[:1] if args.quick else SUITE:
        pipe = argen.load(name, random_weights=random_weights)
        report = run_bench(pipe, samplers, batch_sizes=batches[:1] if args.quick else batches, repeats=repeats,
                           warmup=warmup)
        if random_weights:
            report["model"] += " (random weights)"
        print(format_table(report), flush=True)
        reports.append(report)
    Path(args.out).write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
