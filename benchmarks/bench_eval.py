"""Speed of the FID Inception feature extraction (pool_3 + IS logits + sFID spatial features in one
pass, 256px uint8 images resized to 299 with the TF1 resize), batch 64, and of one 2048-d Fréchet
distance, JSON out:

    python benchmarks/bench_eval.py [--images 256] [--batch-size 64] [--size 256] [--device cpu]
                                    [--inception-weights PATH] [--out benchmarks/results/eval.json]

Without cached / given weights it times a randomly initialised network of the same architecture
(the speed is the same; the JSON says which).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from argen.errors import DownloadError
from argen.eval import compute_activations, frechet_distance, gaussian_stats, load_inception, resolve_weights
from argen.eval.inception import write_random_weights


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=256, help="image side before the resize to 299")
    p.add_argument("--device", default="cpu")
    p.add_argument("--inception-weights")
    p.add_argument("--out", default="benchmarks/results/eval.json")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        try:
            weights, kind = resolve_weights(args.inception_weights, allow_download=False), "FID Inception"
        except DownloadError:
            weights, kind = write_random_weights(Path(tmp) / "random.pth"), "random (same architecture; speed only)"
        net = load_inception(weights, device=args.device)
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    compute_activations(images[: args.batch_size], net, args.batch_size)  # warm-up
    t0 = time.perf_counter()
    acts = compute_activations(images, net, args.batch_size)
    extract_s = time.perf_counter() - t0
    feats = np.random.default_rng(1).normal(size=(4096, 2048)).astype(np.float32)
    t0 = time.perf_counter()
    stats = gaussian_stats(feats)
    stats_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    frechet_distance(*stats, *gaussian_stats(acts.pool if len(acts.pool) > 1 else feats))
    fd_s = time.perf_counter() - t0
    result = {
        "benchmark": "FID Inception feature extraction (pool_3 + logits + mixed_6 in one pass)",
        "weights": kind,
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "images": args.images,
        "image_size": args.size,
        "batch_size": args.batch_size,
        "images_per_s": round(args.images / extract_s, 2),
        "extract_s": round(extract_s, 2),
        "gaussian_stats_4096x2048_s": round(stats_s, 2),
        "frechet_distance_2048_s": round(fd_s, 2),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
