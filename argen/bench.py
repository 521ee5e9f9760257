"""``argen bench``: samplers compared on one model, in one process, with the same weights and seeds.

The model's default sampler (plain AR; ``dd`` at one step for a distilled student) is always run as the
baseline. Per sampler and batch size: forward passes per generation, step compression (baseline passes /
passes), tokens committed per pass per sample (mean and histogram), latency per image and images/s
(median over repeats, sampler + decode), the time of one pass and its cost relative to the baseline's
(speed-up ~ compression / pass cost), and the speed-up over the baseline in the same run; a sampler
slower than the baseline in a setting is flagged, not hidden. Repeat r uses the next classes of the
pool (batch 1 cycles through them), the same for every sampler.

    argen bench --model shapes-llamagen --samplers sjd sjd:window=8,init=random --batch-size 1 8
    argen bench --model flowar-s var-d16 mar-base --random-weights -b 1 8 --repeats 1   # families side by side
    argen bench --model shapes-llamagen shapes-llamagen-dd --samplers dd:steps=2   # a student next to its teacher
    argen bench --model shapes-mar --samplers cspd:draft=shapes-mar-draft,gamma=4   # a draft MAR for its target

Several models run one after the other in the same process; the report then adds a comparison of
their baseline rows (images/s and the ratio to the first model), which is how families are compared.
A sampler spec is ``name`` or ``name:key=value,key=value`` (values parsed as JSON when they parse).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Sequence

import torch

from argen.errors import ConfigError


def parse_sampler(spec: str) -> tuple[str, dict[str, Any]]:
    """'sjd:window=8,init=random' -> ('sjd', {'window': 8, 'init': 'random'})."""
    from argen.options import parse_key_values
    from argen.samplers import SAMPLERS

    name, _, rest = spec.partition(":")
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r} in {spec!r}; available: {', '.join(SAMPLERS)}")
    return name, parse_key_values(filter(None, rest.split(",")))


def _mean_committed(stats) -> float:
    hist = stats.accept_histogram
    if hist and sum(hist):
        return sum(k * c for k, c in enumerate(hist)) / sum(hist)
    return stats.tokens_per_pass  # samplers that fix several tokens per pass without drafts (mask, MAR)


def run_bench(
    pipe,
    samplers: Sequence[str],
    *,
    batch_sizes: Sequence[int] = (1,),
    classes: Sequence[int] | None = None,
    repeats: int = 3,
    seed: int = 0,
    sampling: dict[str, Any] | None = None,
    warmup: bool = True,
) -> dict[str, Any]:
    """Benchmark ``samplers`` (specs) against the model's default sampler on ``pipe``; returns the JSON-able
    report.
    Repeat r draws the next ``batch`` classes of the pool (so batch 1 cycles through the classes:
    acceptance differs from class to class), the same ones for every sampler. ``warmup``: one untimed
    run per sampler first (skip it for big models on the CPU)."""
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    from argen.samplers import default_sampler

    baseline = default_sampler(pipe.generator)
    specs = [baseline] + [s for s in samplers if s != baseline]
    parsed = {s: parse_sampler(s) for s in specs}
    n_classes = pipe.generator.num_classes
    if classes and not pipe.conditional:
        raise ConfigError(f"{pipe.name or 'the model'} is unconditional: benchmark it without classes")
    pool = list(classes) if classes else list(range(max(min(n_classes, 16), 1)))
    sampling = dict(sampling or {})
    results = []
    for bs in batch_sizes:
        if bs < 1:
            raise ConfigError(f"batch sizes must be >= 1, got {bs}")
        times: dict[str, list[float]] = {s: [] for s in specs}
        stats: dict[str, list] = {s: [] for s in specs}

        def once(spec: str, s: int, r: int) -> tuple[float, Any]:
            name, opts = parsed[spec]
            labels = [pool[(r * bs + i) % len(pool)] for i in range(bs)]
            t = time.perf_counter()
            pipe.generate(**pipe.request(labels), sampler=name, seed=s, output_type="pt", **sampling, **opts)
            return time.perf_counter() - t, pipe.last_stats

        for spec in specs if warmup else []:  # warm-up (allocations, kernels), not timed
            once(spec, seed, 0)
        for r in range(repeats):
            for spec in specs if r % 2 == 0 else specs[::-1]:
                dt, st = once(spec, seed + r, r)
                times[spec].append(dt)
                stats[spec].append(st)
        base = statistics.median(times[baseline])
        base_passes = statistics.mean(st.forward_passes for st in stats[baseline])
        for spec in specs:
            med = statistics.median(times[spec])
            passes = statistics.mean(st.forward_passes for st in stats[spec])
            hist = ([sum(col) for col in zip(*[st.accept_histogram for st in stats[spec]])]
                    if stats[spec][0].accept_histogram else [])
            results.append({
                "sampler": spec,
                "batch_size": bs,
                "forward_passes": passes,
                "step_compression": base_passes / passes,
                "tokens_per_pass": statistics.mean(_mean_committed(st) for st in stats[spec]),
                "accept_histogram": hist,
                "latency_s_per_image": med / bs,
                "images_per_s": bs / med,
                "sampler_s": statistics.median(st.wall_time_s for st in stats[spec]),
                # speed-up ~ step compression / pass cost: a wide pass is free only where it is memory-bound
                "ms_per_pass": _ms_per_pass(stats[spec]),
                "pass_cost_vs_baseline": _ms_per_pass(stats[spec]) / _ms_per_pass(stats[baseline]),
                "speedup_vs_baseline": base / med,
                "slower_than_baseline": med > base,
                "times_s": times[spec],
                "options": parsed[spec][1],
                "head_evaluations": statistics.mean(st.head_evaluations for st in stats[spec]),
                **_draft_columns(stats[spec]),
            })
    return {
        "benchmark": "samplers",
        "model": pipe.name,
        "baseline": baseline,
        "tokens_per_image": pipe.generator.seq_len,
        "sampling": sampling,
        "repeats": repeats,
        "warmup": warmup,
        "seed": seed,
        "device": str(pipe.device),
        "dtype": str(next(pipe.generator.parameters()).dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "results": results,
    }


def _draft_columns(stats: list) -> dict[str, float]:
    """A draft model's share (cspd): its passes and head chains, and how much of what it drafted was kept."""
    if not stats[0].draft_passes:
        return {}
    drafted = sum(st.steps_drafted for st in stats)
    tokens = sum(st.tokens_drafted for st in stats)
    return {"draft_passes": statistics.mean(st.draft_passes for st in stats),
            "draft_head_evaluations": statistics.mean(st.draft_head_evaluations for st in stats),
            "step_acceptance": sum(st.steps_accepted for st in stats) / max(drafted, 1),
            "token_acceptance": sum(st.tokens_accepted for st in stats) / max(tokens, 1)}


def _ms_per_pass(stats: list) -> float:
    """Median over repeats of the sampler's own time per forward pass (no decode)."""
    return statistics.median(1000 * st.wall_time_s / st.forward_passes for st in stats)


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table (one row per sampler and batch size)."""
    head = (f"{'sampler':<28} {'batch':>5} {'passes':>7} {'compr.':>7} {'tok/pass':>8} {'ms/pass':>8} {'cost':>6} "
            f"{'s/img':>8} {'img/s':>8} {'vs ' + report['baseline']:>7}")
    lines = [f"{report['model']}: {report['tokens_per_image']} tokens/image, {report['device']}, {report['dtype']}, "
             f"{report['threads']} threads, median of {report['repeats']}", head, "-" * len(head)]
    for r in report["results"]:
        flag = f"  (slower than {report['baseline']})" if r["slower_than_baseline"] else ""
        lines.append(f"{r['sampler']:<28} {r['batch_size']:>5} {r['forward_passes']:>7.1f} "
                     f"{r['step_compression']:>6.2f}x {r['tokens_per_pass']:>8.2f} {r['ms_per_pass']:>8.2f} "
                     f"{r['pass_cost_vs_baseline']:>5.2f}x {r['latency_s_per_image']:>8.3f} {r['images_per_s']:>8.2f} "
                     f"{r['speedup_vs_baseline']:>6.2f}x{flag}")
    return "\n".join(lines)


def compare_models(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several models' reports (same process) -> one report with their baseline rows (each model's default
    sampler) side by side: images/s per batch size and the speed ratio against the first model at that batch size."""
    rows = [{"model": rep["model"], "tokens_per_image": rep["tokens_per_image"], **r}
            for rep in reports for r in rep["results"] if r["sampler"] == rep["baseline"]]
    first = {r["batch_size"]: r["images_per_s"] for r in rows if r["model"] == reports[0]["model"]}
    comparison = [{"model": r["model"], "sampler": r["sampler"], "batch_size": r["batch_size"],
                   "tokens_per_image": r["tokens_per_image"],
                   "latency_s_per_image": r["latency_s_per_image"], "images_per_s": r["images_per_s"],
                   "speed_vs_first": r["images_per_s"] / first[r["batch_size"]] if r["batch_size"] in first else None}
                  for r in rows]
    return {"benchmark": "models", "baseline": reports[0]["model"], "comparison": comparison, "reports": list(reports)}


def format_comparison(report: dict[str, Any]) -> str:
    """The comparison of :func:`compare_models` as a fixed-width table."""
    head = (f"{'model':<36} {'sampler':>7} {'batch':>5} {'tokens':>6} {'s/img':>9} {'img/s':>9} "
            f"{'vs ' + report['baseline'][:14]:>18}")
    lines = ["default samplers, model against model (same process)", head, "-" * len(head)]
    for r in report["comparison"]:
        ratio = "" if r["speed_vs_first"] is None else f"{r['speed_vs_first']:.2f}x"
        lines.append(f"{r['model']:<36} {r['sampler']:>7} {r['batch_size']:>5} {r['tokens_per_image']:>6} "
                     f"{r['latency_s_per_image']:>9.3f} {r['images_per_s']:>9.4f} {ratio:>18}")
    return "\n".join(lines)
