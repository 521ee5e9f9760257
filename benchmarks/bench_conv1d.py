"""GPT-2's (in, out) weight layout (image-GPT's checkpoints): ``argen.nn.Conv1D``'s ``addmm(b, x, W)``
against :func:`argen.nn.linear` on the transposed view ``W.t()`` (what a Linear-style layer would do
with these weights), at the row counts of decoding (1: a step; 2: a guided step; 16-32: SJD windows).
One thread, image-GPT-S and shapes-pixel widths, JSON out with the ratio per shape.

    python benchmarks/bench_conv1d.py [--out benchmarks/results/conv1d.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from argen.nn import Conv1D, linear

SHAPES = [(128, 384), (128, 512), (512, 128), (512, 1536), (512, 2048), (2048, 512)]
ROWS = [1, 2, 4, 16, 32]


def timed(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--out", default="benchmarks/results/conv1d.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    with torch.inference_mode():
        for n_in, n_out in SHAPES:
            layer = Conv1D(n_in, n_out)
            torch.nn.init.normal_(layer.weight, std=0.02)
            for r in ROWS:
                x = torch.randn(1, r, n_in)
                assert torch.allclose(layer(x), linear(x, layer.weight.t(), layer.bias), atol=1e-5)
                ours = timed(lambda: layer(x), args.repeats)
                view = timed(lambda: linear(x, layer.weight.t(), layer.bias), args.repeats)
                rows.append({"in": n_in, "out": n_out, "rows": r, "conv1d_us": round(ours, 1),
                             "linear_on_view_us": round(view, 1), "speedup": round(view / ours, 2)})
                print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": 1, "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
