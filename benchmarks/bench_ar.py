"""Speed benchmark of argen's plain AR sampler (eager and compiled) against the official LlamaGen
decoding strategy.

GPT-B class-to-image, random weights, cfg 4.0, top-k 2000, float32 on the CPU, JSON out:

    python benchmarks/bench_ar.py [--batch 1 8] [--tokens 256] [--repeats N] [--no-compiled]
                                  [--threads N] [--out results.json]

On a shared 2-core machine ``--threads 1`` gives steady numbers (two OpenMP threads stall for
hundreds of milliseconds whenever a core is taken away).

Every speed claim is a ratio measured in this one process, on one model object:

* ``argen``: ``argen.samplers.sample(model, classes, sampler="ar", ...)`` (eager);
* ``compiled``: the same call with ``compile=True`` (the decode step through ``torch.compile``; its
  one-time compile is timed apart, as ``compile_warmup_s``, and excluded from the timed runs);
* ``baseline``: ``benchmarks/official_style.py``, a re-implementation of the official LlamaGen
  ``generate()`` loop (full-length masked attention over a static cache, repeat_interleave'd K/V, ...)
  driving the same model's submodules;
* ``floor``: a float32 matrix with as many elements as the weights one decode step reads (every
  parameter except the token and class embedding tables, which are only gathered), multiplied by 1
  row (matrix-vector) and by the configuration's rows (2 * batch with CFG). The fastest of a few
  formulations counts. ``fraction_of_floor`` = floor ms / measured ms per step.

Runs are interleaved (argen / baseline / compiled, order rotating) and repeated; the median counts.
All use the same seeded ``torch.Generator`` so their tokens can be compared; a short greedy run and
the logits of the first steps are compared as well (recorded under ``verification``; for the compiled
step: its logits against eager decoding's, fed the same greedy tokens).
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from official_style import OfficialStyleDecoder, official_generate  # noqa: E402

import argen.samplers as S  # noqa: E402
from argen.generators import LlamaGen, LlamaGenConfig  # noqa: E402
from argen.samplers.compiled import compiled_decoder  # noqa: E402

CLASSES = [207, 360, 387, 974, 88, 979, 417, 279, 1, 33, 130, 250, 812, 928, 971, 980]
CFG, TOP_K = 4.0, 2000


class ShortRun:
    """The same model seen with a shorter ``seq_len``: lets argen's sampler run only a few tokens
    (warm-up, greedy check) without building another model."""

    def __init__(self, model: LlamaGen, n: int) -> None:
        self._m, self.seq_len = model, n

    def __getattr__(self, name):
        return getattr(self._m, name)

    def parameters(self):
        return self._m.parameters()


def build_model(tokens: int, seed: int, preset: str = "GPT-B") -> LlamaGen:
    torch.manual_seed(seed)
    cfg = LlamaGenConfig.preset(preset, vocab_size=16384, block_size=tokens, num_classes=1000)
    model = LlamaGen(cfg).eval()
    model.init_weights()
    with torch.no_grad():  # the official init zeroes the output layer: make the logits informative
        torch.nn.init.normal_(model.output.weight, std=0.02)
    return model.requires_grad_(False)


def classes_for(batch: int) -> list[int]:
    return [CLASSES[i % len(CLASSES)] for i in range(batch)]


# -- the floor --------------------------------------------------------------------------------------
def floor_elements(model: LlamaGen) -> int:
    gathered = {id(model.tok_embeddings.weight)} | {id(p) for p in model.cls_embedding.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in gathered)


class Floor:
    """A weights-sized float32 matrix (N, dim); times y = W x for 1 row and for the config's rows."""

    def __init__(self, n_elements: int, dim: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(n_elements // dim, dim, generator=g) * 0.02
        self.nbytes = self.w.numel() * self.w.element_size()

    def formulations(self, rows: int):
        w = self.w
        x = torch.randn(rows, w.shape[1])
        f = {
            "F.linear(x, W)": lambda: F.linear(x, w),
            "torch.mm(W, x.t())": lambda: torch.mm(w, x.t()),
        }
        if rows == 1:
            f["torch.mv(W, x)"] = lambda: torch.mv(w, x[0])
        return f

    def time(self, rows: int, calls: int = 5) -> dict[str, float]:
        """Median ms per formulation (one warm-up call each)."""
        out = {}
        for name, fn in self.formulations(rows).items():
            fn()
            ts = []
            for _ in range(calls):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            out[name] = statistics.median(ts) * 1e3
        return out


# -- the samplers -----------------------------------------------------------------------------------
def run_argen(model, classes, seed, n=None, greedy=False, compile=False):
    m = model if n is None else ShortRun(model, n)
    t = time.perf_counter()
    codes, stats = S.sample(m, classes, sampler="ar", seed=seed, cfg_scale=CFG, top_k=TOP_K, greedy=greedy,
                            compile=compile)
    return codes, time.perf_counter() - t, stats


@torch.inference_mode()
def compiled_check(model, classes, steps: int) -> dict:
    """The compiled decode step against eager decoding, fed the same (greedy, eager) tokens: max logit
    difference and whether every greedy token agrees. The first call compiles (``compile_s``)."""
    b = len(classes)
    cond = torch.tensor(classes + [model.config.num_classes] * b, device=model.tok_embeddings.weight.device)
    dec = compiled_decoder(model)
    cache, ccache = model.new_cache(2 * b), dec.new_cache(2 * b)
    a, c = model.prefill(cond, cache), dec.prefill(cond, ccache)
    worst, same, compile_s = (a - c).abs().max().item(), True, 0.0
    for i in range(steps):
        tok = a[:b].argmax(-1, keepdim=True)
        same &= bool(torch.equal(tok, c[:b].argmax(-1, keepdim=True)))
        tok = torch.cat([tok, tok])
        a = model.decode(tok, cache)[:, -1]
        t = time.perf_counter()
        c = dec.decode(tok, ccache)[:, -1]
        if i == 0:
            worst = max(worst, (a - c).abs().max().item())  # waits for the device
            compile_s = time.perf_counter() - t
        worst = max(worst, (a - c).abs().max().item())
    return {"compiled_greedy_tokens_identical": same, "compiled_max_abs_logit_diff_vs_eager": worst,
            "compile_s": compile_s}


def run_baseline(model, classes, seed, n=None, greedy=False):
    gen = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    codes, _ = official_generate(model, classes, n, cfg_scale=CFG, top_k=TOP_K, generator=gen, greedy=greedy)
    return codes, time.perf_counter() - t


@torch.inference_mode()
def logits_diff(model, classes, steps: int) -> float:
    """Max |argen - baseline| over the logits of the prefill and the first ``steps`` decode steps,
    fed the same (greedy, from argen) tokens."""
    b = len(classes)
    cond = torch.tensor(classes + [model.config.num_classes] * b)
    cache = model.new_cache(2 * b)
    dec = OfficialStyleDecoder(model, 2 * b)
    a = model.prefill(cond, cache)
    o = dec.forward(model.cls_embedding(cond), torch.arange(1))[:, -1]
    worst = (a - o).abs().max().item()
    for i in range(steps):
        tok = a[:b].argmax(-1, keepdim=True)
        tok = torch.cat([tok, tok])
        a = model.decode(tok, cache)[:, -1]
        o = dec.forward(model.tok_embeddings(tok), torch.tensor([i + 1], dtype=torch.int))[:, -1]
        worst = max(worst, (a - o).abs().max().item())
    return worst


def verify(model, batch: int, n: int, compiled: bool) -> dict:
    classes = classes_for(batch)
    ga, _, _ = run_argen(model, classes, 0, n, greedy=True)
    gb, _ = run_baseline(model, classes, 0, n, greedy=True)
    sa, _, _ = run_argen(model, classes, 123, n)
    sb, _ = run_baseline(model, classes, 123, n)
    out = {
        "batch": batch,
        "tokens": n,
        "greedy_tokens_identical": bool(torch.equal(ga, gb)),
        "sampled_tokens_identical_same_seed": bool(torch.equal(sa, sb)),
        "max_abs_logit_diff": logits_diff(model, classes, min(n, 8)),
    }
    if compiled:  # also compiles the graph the timed compiled runs use (same rows, same cache length)
        out.update(compiled_check(model, classes, n))
    return out


def bench_config(model, floor: Floor, batch: int, tokens: int, repeats: int, warmup_tokens: int,
                 compiled: bool = True) -> dict:
    classes = classes_for(batch)
    rows = 2 * batch  # CFG: [cond ; uncond]
    arms = ("argen", "baseline", "compiled") if compiled else ("argen", "baseline")
    for _ in range(1):  # warm-up (allocator, MKL / SDPA kernels; the compiled graph is built by verify)
        run_argen(model, classes, 0, warmup_tokens)
        run_baseline(model, classes, 0, warmup_tokens)
        floor.time(rows, calls=2)
    walls: dict[str, list[float]] = {a: [] for a in arms}
    same, same_compiled, fl_rows, fl_mv = [], [], [], []
    for r in range(repeats):
        order = arms[r % len(arms):] + arms[: r % len(arms)]  # rotate who runs first
        res = {}
        for who in order:
            if who == "baseline":
                res[who] = run_baseline(model, classes, seed=r)
            else:
                codes, wall, _ = run_argen(model, classes, seed=r, compile=who == "compiled")
                res[who] = (codes, wall)
            walls[who].append(res[who][1])
        same.append(bool(torch.equal(res["argen"][0], res["baseline"][0])))
        if compiled:
            same_compiled.append(bool(torch.equal(res["compiled"][0], res["argen"][0])))
        fl_rows.append(min(floor.time(rows).values()))
        fl_mv.append(min(floor.time(1).values()))
        print(
            f"[batch {batch}] repeat {r}: "
            + ", ".join(f"{a} {batch * tokens / walls[a][-1]:.1f} tok/s" for a in arms)
            + f", floor {fl_rows[-1]:.1f} ms ({rows} rows)",
            file=sys.stderr,
            flush=True,
        )
    a_s, b_s = walls["argen"], walls["baseline"]
    a, b = statistics.median(a_s), statistics.median(b_s)
    f_rows, f_mv = statistics.median(fl_rows), statistics.median(fl_mv)
    a_step, b_step = a / tokens * 1e3, b / tokens * 1e3
    extra = {}
    if compiled:
        c = statistics.median(walls["compiled"])
        c_step = c / tokens * 1e3
        extra = {
            "compiled_tokens_per_s": batch * tokens / c,
            "compiled_ms_per_step": c_step,
            "compiled_speedup_vs_eager": a / c,
            "compiled_speedup_vs_baseline": b / c,
            "compiled_fraction_of_floor": f_rows / c_step,
            "compiled_tokens_identical_to_eager_same_seed": same_compiled,
            "compiled_wall_s": walls["compiled"],
        }
    return {
        "batch": batch,
        "rows_per_step": rows,
        "tokens_per_sample": tokens,
        "argen_tokens_per_s": batch * tokens / a,
        "baseline_tokens_per_s": batch * tokens / b,
        "speedup_vs_baseline": b / a,
        "argen_ms_per_step": a_step,
        "baseline_ms_per_step": b_step,
        "floor_ms_per_step": f_rows,
        "floor_tokens_per_s": batch / (f_rows / 1e3),
        "argen_fraction_of_floor": f_rows / a_step,
        "baseline_fraction_of_floor": f_rows / b_step,
        "floor_mv_ms": f_mv,
        "argen_fraction_of_mv_floor": f_mv / a_step,
        "sampled_tokens_identical_same_seed": same,
        "argen_wall_s": a_s,
        "baseline_wall_s": b_s,
        "floor_ms_by_repeat": fl_rows,
        **extra,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--tokens", type=int, default=256, help="image tokens per sample (a square)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--verify-tokens", type=int, default=16)
    p.add_argument("--warmup-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")
    p.add_argument("--no-compiled", dest="compiled", action="store_false", help="skip the compile=True arm")
    p.add_argument("--threads", type=int, help="torch threads (1 steadies timings on a shared machine)")
    p.add_argument("--out", type=str, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model = build_model(args.tokens, args.seed)
    n_floor = floor_elements(model)
    floor = Floor(n_floor, model.config.dim)

    # the floor at 1 row, measured up front (also re-measured inside every repeat)
    for _ in range(2):
        floor.time(1, calls=2)
    mv = floor.time(1, calls=7)
    mv_best = min(mv.values())

    verification = [verify(model, b, min(args.verify_tokens, args.tokens), args.compiled)
                    for b in sorted(set(args.batch))]
    configs = [bench_config(model, floor, b, args.tokens, args.repeats, args.warmup_tokens, args.compiled)
               for b in args.batch]
    for c in configs:  # all formulations at this config's rows, for the record
        c["floor_ms_by_formulation"] = floor.time(c["rows_per_step"])

    result = {
        "benchmark": "argen AR sampler (eager and compile=True) vs official-LlamaGen-style generate()",
        "model": "LlamaGen GPT-B c2i (random weights)",
        "settings": {
            "tokens_per_sample": args.tokens,
            "cfg_scale": CFG,
            "top_k": TOP_K,
            "temperature": 1.0,
            "dtype": "float32",
            "repeats": args.repeats,
            "statistic": "median over repeats (argen / baseline / compiled interleaved, order rotating)",
            "compiled": args.compiled,
        },
        "machine": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
        "floor": {
            "definition": "float32 matrix with as many elements as the weights a decode step reads "
            "(all parameters except the token / class embedding tables), times 1 row; best formulation",
            "elements": n_floor,
            "megabytes": floor.nbytes / 1e6,
            "mv_ms_by_formulation": mv,
            "mv_ms": mv_best,
            "gb_per_s": floor.nbytes / (mv_best / 1e3) / 1e9,
            "tokens_per_s_upper_bound_batch1": 1e3 / mv_best,
        },
        "verification": verification,
        "configs": configs,
        "total_time_s": None,
    }
    result["total_time_s"] = time.perf_counter() - t0
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
