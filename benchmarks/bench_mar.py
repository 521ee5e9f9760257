"""Speed of MAR sampling on the CPU, and where the time goes: the transformer (encoder + decoder,
one pass per iteration) against the diffusion head (every reverse step of every predicted token)
and the VAE decode.

MAR-B with random weights (official architecture), num_iter 64, 100 diffusion steps, cfg 3.0 with
the linear schedule, float32, batch 1 and 8, JSON out:

    python benchmarks/bench_mar.py [--model mar-base] [--batch 1 8] [--num-iter 64] [--diffusion-steps 100]
                                   [--repeats 1] [--out benchmarks/results/mar.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import argen

CLASSES = [207, 360, 387, 974, 88, 979, 417, 279]


class Timer:
    """Wraps a bound method and adds up its wall time."""

    def __init__(self, obj, name: str) -> None:
        self.total, self.calls = 0.0, 0
        fn = getattr(obj, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total += time.perf_counter() - t
                self.calls += 1

        setattr(obj, name, timed)

    def reset(self) -> None:
        self.total, self.calls = 0.0, 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mar-base")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--num-iter", type=int, default=64)
    p.add_argument("--diffusion-steps", type=int, default=100)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--out")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    pipe = argen.load(args.model, random_weights=True)
    mar, vae = pipe.generator, pipe.tokenizer
    timers = {"transformer": Timer(mar, "conditions"), "diffusion_head": Timer(mar.diffloss, "sample"),
              "vae_decode": Timer(vae, "decode")}
    opts = dict(cfg_scale=args.cfg, cfg_schedule="linear", temperature=1.0, num_iter=args.num_iter,
                diffusion_steps=args.diffusion_steps)
    pipe.generate([CLASSES[0]], seed=0, output_type="pt", num_iter=2, diffusion_steps=2, cfg_scale=args.cfg)  # warm-up
    results = []
    for bs in args.batch:
        labels = [CLASSES[i % len(CLASSES)] for i in range(bs)]
        runs = []
        for r in range(args.repeats):
            for t in timers.values():
                t.reset()
            t0 = time.perf_counter()
            pipe.generate(labels, seed=r, output_type="pt", **opts)
            total = time.perf_counter() - t0
            runs.append({"total_s": total, **{k: t.total for k, t in timers.items()}})
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        parts = {k: med[k] for k in timers}
        parts["other"] = med["total_s"] - sum(parts.values())
        results.append({
            "batch": bs,
            "s_per_image": med["total_s"] / bs,
            "images_per_s": bs / med["total_s"],
            "time_split_s": parts,
            "time_split_fraction": {k: v / med["total_s"] for k, v in parts.items()},
            "dominant": max(timers, key=lambda k: parts[k]),
            "transformer_passes": args.num_iter,
            "diffusion_head_calls": timers["diffusion_head"].calls,
            "runs": runs,
        })
        print(json.dumps(results[-1]), flush=True)
    report = {
        "benchmark": "mar-sampling",
        "model": f"{args.model} (random weights)",
        "sampling": opts,
        "dtype": "float32",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
