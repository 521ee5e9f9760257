"""Distilled decoding against its teacher's AR sampler, in one process, JSON out:

    python benchmarks/bench_dd.py [--pairs llamagen var] [--batch 1 8] [--repeats 2]
                                  [--out benchmarks/results/dd.json]

Random weights, official architectures, float32, the CPU's default threads:

* ``llamagen``: DD-LlamaGen-B (1 and 2 passes) vs GPT-B's ``ar`` at 256 tokens, cfg 4, top-k 2000;
* ``var``: DD-VAR-d16 (1 and 2 passes) vs VAR-d16's ``ar``, cfg 1.5, top-k 900, top-p 0.96 (its FID setting).

Two times per run: token generation alone (``output_type="codes"``: what the sampler costs) and images
including the tokenizer's decode, which student and teacher both pay once per image. Ratios are
teacher time / student time at the same batch. Both do about the same arithmetic per image (a student pass
reads every token once, as the teacher's steps do together, but the teacher runs CFG's second row): the
student wins by running it as one compute-bound pass where the teacher's single-token steps are bound by
reading the weights. ``*_gflop`` (linear layers, per image) and ``*_gflop_per_s`` (achieved in the token
time) show where each one stands.
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
PAIRS = {
    "llamagen": ("llamagen-gpt-b", "dd-llamagen-b", {"cfg_scale": 4.0, "top_k": 2000, "top_p": 1.0}),
    "var": ("var-d16", "dd-var-d16", {"cfg_scale": 1.5, "top_k": 900, "top_p": 0.96}),
}


def _median_time(fn, repeats: int) -> float:
    walls = []
    for r in range(repeats):
        t = time.perf_counter()
        fn(r)
        walls.append(time.perf_counter() - t)
    return statistics.median(walls)


def matmul_params(model: torch.nn.Module) -> int:
    """Weights of the linear layers (the FLOPs per token of a forward are about twice this)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def gflop_per_image(model: torch.nn.Module, rows: int, passes: int) -> float:
    """2 FLOPs per linear weight per token, for every token, CFG row and pass (attention left out)."""
    return 2 * matmul_params(model) * model.seq_len * rows * passes / 1e9


def bench_pair(name: str, batches: list[int], repeats: int) -> dict:
    teacher_name, student_name, opts = PAIRS[name]
    teacher = argen.load(teacher_name, random_weights=True)
    student = argen.load(student_name, random_weights=True)
    out = {"teacher": teacher_name, "student": student_name, "teacher_sampling": opts, "results": []}
    teacher.generate(CLASSES[:1], seed=0, output_type="codes", **opts)  # warm-up
    student.generate(CLASSES[:1], seed=0, output_type="codes")
    for bs in batches:
        labels = [CLASSES[i % len(CLASSES)] for i in range(bs)]
        row = {"batch": bs}
        for what, output in (("tokens", "codes"), ("images", "pt")):
            t_ar = _median_time(lambda r: teacher.generate(labels, seed=r, output_type=output, **opts), repeats)
            row[f"teacher_ar_{what}_s"] = t_ar
            for steps in (1, 2):
                t_dd = _median_time(lambda r: student.generate(labels, seed=r, output_type=output, steps=steps),
                                    repeats)
                row[f"dd{steps}_{what}_s"] = t_dd
                row[f"dd{steps}_{what}_speedup"] = t_ar / t_dd
            row[f"teacher_ar_{what}_per_s"] = bs / t_ar
        rows = 2 if opts["cfg_scale"] > 1.0 else 1  # CFG doubles the teacher's batch
        row["teacher_gflop"] = gflop_per_image(teacher.generator, rows, 1)
        row["teacher_gflop_per_s"] = row["teacher_gflop"] * bs / row["teacher_ar_tokens_s"]
        for steps in (1, 2):
            row[f"dd{steps}_images_per_s"] = bs / row[f"dd{steps}_images_s"]
            row[f"dd{steps}_gflop"] = gflop_per_image(student.generator, 1, steps)
            row[f"dd{steps}_gflop_per_s"] = row[f"dd{steps}_gflop"] * bs / row[f"dd{steps}_tokens_s"]
        out["results"].append(row)
        print(json.dumps({name: row}), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/dd.json")
    args = p.parse_args()
    torch.manual_seed(0)
    result = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "pairs": {name: bench_pair(name, args.batch, args.repeats) for name in args.pairs},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
