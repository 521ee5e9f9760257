"""Continuous speculative decoding against the target alone, in one process, JSON out:

    python benchmarks/bench_cspd.py [--pairs shapes mar-b-l] [--batch 1 8] [--repeats 1]
                                    [--num-iter 64] [--out benchmarks/results/cspd.json]

Per pair and batch size, four ways to sample the target, each with the same classes and seeds:

* ``ar``: plain target AR with ``final_noise=True`` - the distribution ``cspd-exact`` keeps (baseline);
* ``cspd-exact``: the draft proposes ``gamma`` steps, the target verifies them step by step;
* ``cspd-official``: MarkXCloud/CSpD's procedure (approximate: heuristic acceptance, deterministic last step);
* ``ar-coarse``: the target alone at the gamma-coarse schedule the official verifies on
  (:func:`argen.samplers.cspd.coarse_schedule`): the same number of target passes as the official, no draft.

Reported: target passes per image (sequential: a batched verification pass counts once), draft passes,
head chains (target and draft), acceptance per drafted step and per token, wall-clock (median), and each
one's ratio to ``ar``. Pairs: ``shapes`` (the bundled shapes-mar and its draft shapes-mar-draft, trained
weights, their shipped sampling defaults), ``shapes-self`` (shapes-mar drafting for itself: all drafts
kept, the most verification can save) and ``mar-b-l`` (MAR-B drafting MAR-L, official architectures with
seeded random weights). The official code hard-codes CUDA, so it is not timed here.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import argen
from argen.samplers.cspd import coarse_schedule

# target, draft, options (None: the target's shipped defaults), random weights
PAIRS = {
    "shapes": ("shapes-mar", "shapes-mar-draft", None, False),
    # the target drafting for itself: every token kept, the ceiling of what verification can save
    "shapes-self": ("shapes-mar", "shapes-mar", None, False),
    "mar-b-l": ("mar-large", "mar-base", {"cfg_scale": 3.0, "cfg_schedule": "linear", "temperature": 1.0}, True),
}


def _row(name: str, stats: list, times: list[float], batch: int) -> dict[str, Any]:
    d = [s.as_dict() for s in stats]
    mean = lambda k: statistics.mean(x.get(k, 0) for x in d)  # noqa: E731
    drafted = sum(x.get("steps_drafted", 0) for x in d)
    tokens = sum(x.get("tokens_drafted", 0) for x in d)
    return {
        "sampler": name,
        "batch_size": batch,
        "target_passes": mean("forward_passes"),
        "draft_passes": mean("draft_passes"),
        "target_head_chains": mean("head_evaluations"),
        "draft_head_chains": mean("draft_head_evaluations"),
        "step_acceptance": sum(x.get("steps_accepted", 0) for x in d) / drafted if drafted else None,
        "token_acceptance": sum(x.get("tokens_accepted", 0) for x in d) / tokens if tokens else None,
        "steps_per_target_pass": stats[0].accept_histogram or None,
        "residual_fallbacks": sum(x.get("residual_fallbacks", 0) for x in d),
        "wall_s": statistics.median(times),
        "times_s": times,
    }


def bench_pair(name: str, batches: list[int], repeats: int, num_iter: int | None, diffusion_steps: int | None,
               gamma: int, prefill: float, seed: int) -> dict[str, Any]:
    target_name, draft_name, options, random = PAIRS[name]
    target = argen.load(target_name, random_weights=random)
    draft = argen.load(draft_name, random_weights=random)
    opts = {**target.defaults, **(options or {})}
    if num_iter is not None:
        opts["num_iter"] = num_iter
    if diffusion_steps is not None:
        opts["diffusion_steps"] = diffusion_steps
    k = opts.get("num_iter", 64)
    spec = dict(draft=draft, gamma=gamma, prefill=prefill)
    ways = {
        "ar": ("ar", dict(final_noise=True)),
        "cspd-exact": ("cspd", dict(spec, variant="exact")),
        "cspd-official": ("cspd", dict(spec, variant="official")),
        "ar-coarse": ("ar", dict(schedule=coarse_schedule(target.generator.seq_len, k, gamma, prefill))),
    }
    n_classes = target.generator.num_classes
    results = []
    for bs in batches:
        stats: dict[str, list] = {w: [] for w in ways}
        times: dict[str, list[float]] = {w: [] for w in ways}
        for r in range(repeats):
            labels = [(r * bs + i) % n_classes for i in range(bs)]
            for w in ways if r % 2 == 0 else list(ways)[::-1]:
                sampler, extra = ways[w]
                t = time.perf_counter()
                target.generate(labels, sampler=sampler, seed=seed + r, output_type="codes", **{**opts, **extra})
                times[w].append(time.perf_counter() - t)
                stats[w].append(target.last_stats)
        rows = [_row(w, stats[w], times[w], bs) for w in ways]
        base = rows[0]
        for row in rows:
            row["target_passes_vs_ar"] = base["target_passes"] / row["target_passes"]
            row["speedup_vs_ar"] = base["wall_s"] / row["wall_s"]
        results.extend(rows)
        for row in rows:
            print(f"{name} b{bs} {row['sampler']:<14} passes {row['target_passes']:6.1f} "
                  f"({row['target_passes_vs_ar']:.2f}x fewer) draft {row['draft_passes']:5.1f} "
                  f"tok-acc {row['token_acceptance'] if row['token_acceptance'] is not None else '-'} "
                  f"wall {row['wall_s']:.2f}s ({row['speedup_vs_ar']:.2f}x)", flush=True)
    return {"pair": name, "target": target_name, "draft": draft_name, "random_weights": random,
            "options": {k: v for k, v in opts.items()}, "gamma": gamma, "prefill": prefill, "results": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--num-iter", type=int, help="MAR steps (default: each target's own)")
    ap.add_argument("--diffusion-steps", type=int, help="head reverse steps (default: each target's own)")
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--prefill", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON file (default: print only)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    report = {
        "benchmark": "cspd",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "pairs": [bench_pair(p, args.batch, args.repeats, args.num_iter, args.diffusion_steps, args.gamma,
                             args.prefill, args.seed) for p in args.pairs],
    }
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
