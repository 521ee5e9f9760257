"""Distilled decoding against its teacher's AR sampler, in one process, JSON out:

    python benchmarks/bench_dd.py [--pairs llamagen var] [--batch 1 8] [--repeats 2]
                                  [--out benchmarks/results/dd.json]

Float32, the CPU's default threads:

* ``llamagen``: DD-LlamaGen-B (1 and 2 passes) vs GPT-B's ``ar`` at 256 tokens, cfg 4, top-k 2000 (random
  weights, official architectures);
* ``var``: DD-VAR-d16 (1 and 2 passes) vs VAR-d16's ``ar``, cfg 1.5, top-k 900, top-p 0.96 (its FID setting);
* ``shapes-llamagen``, ``shapes-var``: the bundled students vs their bundled teachers (trained weights, the
  teachers' shipped sampling defaults), plus judged class accuracy and shapes FD of both (500 images each).

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
# (teacher, student, the teacher's sampling options: None = its shipped defaults); official architectures
# with random weights, the bundled pairs with their trained weights (and judged quality)
PAIRS = {
    "llamagen": ("llamagen-gpt-b", "dd-llamagen-b", {"cfg_scale": 4.0, "top_k": 2000, "top_p": 1.0}),
    "var": ("var-d16", "dd-var-d16", {"cfg_scale": 1.5, "top_k": 900, "top_p": 0.96}),
    "shapes-llamagen": ("shapes-llamagen", "shapes-llamagen-dd", None),
    "shapes-var": ("shapes-var", "shapes-var-dd", None),
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
    bundled = opts is None
    teacher = argen.load(teacher_name, random_weights=not bundled)
    student = argen.load(student_name, random_weights=not bundled)
    opts = opts or {}
    classes = CLASSES if not bundled else list(range(teacher.generator.num_classes))
    out = {"teacher": teacher_name, "student": student_name, "weights": "trained" if bundled else "random",
           "teacher_sampling": {**teacher.defaults, **opts}, "results": []}
    teacher.generate(classes[:1], seed=0, output_type="codes", **opts)  # warm-up
    student.generate(classes[:1], seed=0, output_type="codes")
    for bs in batches:
        labels = [classes[i % len(classes)] for i in range(bs)]
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
        rows = 2 if out["teacher_sampling"].get("cfg_scale", 1.0) > 1.0 else 1  # CFG doubles the teacher's batch
        row["teacher_gflop"] = gflop_per_image(teacher.generator, rows, 1)
        row["teacher_gflop_per_s"] = row["teacher_gflop"] * bs / row["teacher_ar_tokens_s"]
        for steps in (1, 2):
            row[f"dd{steps}_images_per_s"] = bs / row[f"dd{steps}_images_s"]
            row[f"dd{steps}_gflop"] = gflop_per_image(student.generator, 1, steps)
            row[f"dd{steps}_gflop_per_s"] = row[f"dd{steps}_gflop"] * bs / row[f"dd{steps}_tokens_s"]
        out["results"].append(row)
        print(json.dumps({name: row}), flush=True)
    if bundled:
        out["quality"] = judged_quality(teacher_name, student_name)
        print(json.dumps({name: out["quality"]}), flush=True)
    return out


def judged_quality(teacher: str, student: str, per_class: int = 50) -> dict:
    """Judged class accuracy and shapes FD (`argen eval --domain shapes`) of the teacher and of the student at
    1 and 2 steps; ``accuracy_gap_2step``: teacher minus student at 2 steps, in points (target <= 10)."""
    from argen.eval.shapes import evaluate_model, load_judge

    judge = load_judge()
    runs = {"teacher_ar": dict(model=teacher), "dd1": dict(model=student, steps=1),
            "dd2": dict(model=student, steps=2)}
    q = {}
    for k, r in runs.items():
        e = evaluate_model(**r, per_class=per_class, judge=judge)
        q[k] = {"accuracy": e["accuracy"], "frechet_distance": e["frechet_distance"], "images": e["images"]}
    q["accuracy_gap_2step"] = 100 * (q["teacher_ar"]["accuracy"] - q["dd2"]["accuracy"])
    return q


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
