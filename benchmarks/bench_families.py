"""Speed of the model families side by side on the CPU, and where each one's time goes.

Every model with random weights (official architecture) and its released sampling settings, float32,
batch 1 and 8, in one process, JSON out:

    python benchmarks/bench_families.py [--models mar-base flowar-s var-d16] [--batch 1 8]
                                        [--repeats 1] [--out benchmarks/results/families.json]

* ``mar-base``: num_iter 64, 100 diffusion steps, cfg 3.0 with the linear schedule (issue 6's setting);
  split into the transformer (encoder + decoder, one pass per iteration), the diffusion head (every
  reverse step of every predicted token) and the VAE decode.
* ``flowar-s``: the released 25 flow steps, cfg 4.3 (linear), guidance interval 0.9; split into the
  transformer (one pass per scale) and the flow head (every Euler step of every scale).
* ``var-d16``: cfg 1.5, top-k 900, top-p 0.96; split into the transformer (one pass per scale) and the
  VQ-VAE decode.

``--set model:key=value`` overrides a sampling option (e.g. ``--set mar-base:diffusion_steps=50``).
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
from argen.options import parse_key_values

CLASSES = [207, 360, 387, 974, 88, 979, 417, 279]

# per family: sampling options on top of the zoo defaults (VAR: the FID setting, as bench_var.py)
SETTINGS = {
    "mar": {"cfg_scale": 3.0, "cfg_schedule": "linear", "temperature": 1.0, "num_iter": 64, "diffusion_steps": 100},
    "flowar": {},
    "var": {"cfg_scale": 1.5, "top_k": 900, "top_p": 0.96},
}
WARMUP = {
    "mar": {"num_iter": 2, "diffusion_steps": 2},
    "flowar": {"num_steps": 2},
    "var": {},
}


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


def part_timers(family: str, pipe) -> dict[str, Timer]:
    gen, tok = pipe.generator, pipe.tokenizer
    if family == "mar":
        parts = {"transformer": Timer(gen, "conditions"), "diffusion_head": Timer(gen.diffloss, "sample")}
    elif family == "flowar":
        parts = {"transformer": Timer(gen, "step"), "flow_head": Timer(gen, "velocity")}
    else:  # var (bench_model admits only the families of SETTINGS)
        parts = {"transformer": Timer(gen, "step")}
    parts["vae_decode"] = Timer(tok, "decode")
    return parts


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``model:key=value`` items -> {model: {key: value}} (values as JSON, like ``argen bench``)."""
    out: dict[str, dict] = {}
    for item in items:
        model, _, kv = item.partition(":")
        out.setdefault(model, {}).update(parse_key_values([kv]))
    return out


def bench_model(name: str, batches: list[int], repeats: int, overrides: dict) -> dict:
    entry = argen.zoo.OFFICIAL.get(name)
    if entry is None or entry.family not in SETTINGS:
        known = [n for n, e in argen.zoo.OFFICIAL.items() if e.family in SETTINGS]
        raise SystemExit(f"bench_families times the official mar, flowar and var models ({', '.join(known)}), "
                         f"not {name!r}")
    family = entry.family
    pipe = argen.load(name, random_weights=True)
    timers = part_timers(family, pipe)
    opts = {**pipe.defaults, **SETTINGS.get(family, {}), **overrides}
    pipe.generate([CLASSES[0]], seed=0, output_type="pt", **{**opts, **WARMUP.get(family, {})})  # warm-up
    results = []
    for bs in batches:
        labels = [CLASSES[i % len(CLASSES)] for i in range(bs)]
        runs = []
        for r in range(repeats):
            for t in timers.values():
                t.reset()
            t0 = time.perf_counter()
            pipe.generate(labels, seed=r, output_type="pt", **opts)
            total = time.perf_counter() - t0
            runs.append({"total_s": total, **{k: t.total for k, t in timers.items()},
                         **{f"{k}_calls": t.calls for k, t in timers.items()}})
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
            "calls": {k: runs[0][f"{k}_calls"] for k in timers},
            "runs": runs,
        })
        print(json.dumps({"model": name, **results[-1]}), flush=True)
    return {"model": f"{name} (random weights)", "family": family, "sampling": opts, "results": results}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["mar-base", "flowar-s", "var-d16"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="model:key=value sampling override")
    p.add_argument("--threads", type=int)
    p.add_argument("--out")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    overrides = parse_overrides(args.set)
    models = [bench_model(m, args.batch, args.repeats, overrides.get(m, {})) for m in args.models]
    table = [(m["model"], r["batch"], r["s_per_image"], r["images_per_s"], r["dominant"])
             for m in models for r in m["results"]]
    for row in table:
        print("{:<32} batch {:>2}  {:9.2f} s/image  {:8.4f} images/s  dominant: {}".format(*row))
    report = {
        "benchmark": "model-families",
        "dtype": "float32",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "models": models,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
