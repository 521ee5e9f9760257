"""Speed benchmark of argen's VAR sampling against the official ``autoregressive_infer_cfg`` strategy.

VAR-d16 with random weights + the 256px VQ-VAE, cfg 1.5, top-k 900, top-p 0.96, float32 on the CPU,
images/s including the VQ-VAE decode, JSON out:

    python benchmarks/bench_var.py [--batch 1 8] [--depth 16] [--repeats 3] [--out results.json]

Both paths run in this one process on one model object and one seeded generator stream, interleaved
(order alternating), median of ``repeats``:

* ``argen``: ``ARPipeline.generate(..., output_type="pt")`` (scale sampler + VQ-VAE decode);
* ``baseline``: ``benchmarks/official_var.py``, a re-implementation of the official loop.

The ids of both are compared (they must be equal) and the images (float round-off). The FLOPs of one
generation are counted with ``torch.utils.flop_counter`` and reported as achieved GFLOP/s and as a
fraction of a float32 matmul peak measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from official_var import official_var_generate  # noqa: E402

from argen.generators import VAR, VARConfig  # noqa: E402
from argen.generators.var import PRESETS as VAR_PRESETS  # noqa: E402
from argen.pipeline import ARPipeline  # noqa: E402
from argen.tokenizers import MultiScaleVQConfig, MultiScaleVQVAE  # noqa: E402

CLASSES = [207, 360, 387, 974, 88, 979, 417, 279, 1, 33, 130, 250, 812, 928, 971, 980]
CFG, TOP_K, TOP_P = 1.5, 900, 0.96


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of an n x n matmul on this machine."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def build(depth: int) -> ARPipeline:
    torch.manual_seed(0)
    vae = MultiScaleVQVAE(MultiScaleVQConfig.preset("vae_ch160v4096z32")).eval()
    var = VAR(VARConfig.preset(f"d{depth}") if f"d{depth}" in VAR_PRESETS else VARConfig(depth=depth))
    var.init_weights()
    # random weights with non-trivial AdaLN gates, so every block contributes
    with torch.no_grad():
        for blk in var.blocks:
            if hasattr(blk, "ada_lin"):
                blk.ada_lin[-1].bias.normal_(0, 0.1)
    return ARPipeline(var, vae, defaults={"cfg_scale": CFG, "top_k": TOP_K, "top_p": TOP_P},
                      name=f"var-d{depth}-random")


def run_argen(pipe: ARPipeline, labels: list[int], seed: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    t = time.perf_counter()
    images = pipe.generate(labels, seed=seed, output_type="pt")
    dt = time.perf_counter() - t
    ids = pipe.last_codes
    return dt, ids, images.add(1).mul(0.5)


def run_baseline(pipe: ARPipeline, labels: list[int], seed: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    ids, images = official_var_generate(pipe.generator, torch.tensor(labels), CFG, TOP_K, TOP_P, rng)
    return time.perf_counter() - t, ids, images


def count_gflop(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    pipe = build(args.depth)
    peak = matmul_peak()
    results = []
    for bs in args.batch:
        labels = CLASSES[:bs] if bs <= len(CLASSES) else [CLASSES[i % len(CLASSES)] for i in range(bs)]
        run_argen(pipe, labels[:1], 0)  # warm-up
        run_baseline(pipe, labels[:1], 0)
        times: dict[str, list[float]] = {"argen": [], "baseline": []}
        first: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for r in range(args.repeats):
            order = [("argen", run_argen), ("baseline", run_baseline)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                dt, ids, images = fn(pipe, labels, seed=r)
                times[name].append(dt)
                first.setdefault(name, (ids, images))
        (a_ids, a_img), (b_ids, b_img) = first["argen"], first["baseline"]
        gflop = count_gflop(lambda: pipe.generate(labels, seed=0, output_type="pt"))
        med = {k: statistics.median(v) for k, v in times.items()}
        results.append({
            "batch": bs,
            "argen_s_per_image": med["argen"] / bs,
            "baseline_s_per_image": med["baseline"] / bs,
            "argen_images_per_s": bs / med["argen"],
            "baseline_images_per_s": bs / med["baseline"],
            "speedup": med["baseline"] / med["argen"],
            "ids_equal": bool(torch.equal(a_ids.cpu(), b_ids.cpu())),
            "image_max_abs_diff": float((a_img - b_img).abs().max()),
            "gflop_per_generation": gflop,
            "argen_gflop_per_s": gflop / med["argen"],
            "fraction_of_matmul_peak": gflop / med["argen"] / peak,
            "times_s": times,
        })
        print(json.dumps(results[-1]), flush=True)
    report = {
        "benchmark": "var-sampling",
        "model": f"VAR-d{args.depth} (random weights) + VQ-VAE ch160 v4096 z32, 256px",
        "sampling": {"cfg_scale": CFG, "top_k": TOP_K, "top_p": TOP_P},
        "dtype": "float32",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "matmul_peak_gflop_per_s": peak,
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
