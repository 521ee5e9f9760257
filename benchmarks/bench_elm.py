"""ELM-L 2-12 (328.2M parameters, random weights): argen's KV-cached ``ar`` and ``sjd`` against the OFFICIAL
``Transformer.generate_cfg`` of Pepper-lll/LMforImageGeneration (``llama/ar_model.py``), the same weights,
one process, float32 on the CPU.

    mkdir -p /tmp/elm_official
    git -C <mirror of Pepper-lll/LMforImageGeneration> archive HEAD | tar -x -C /tmp/elm_official
    python benchmarks/bench_elm.py --official /tmp/elm_official
        [--batch 1 8] [--window 16 32] [--seed 0] [--threads 2] [--repeats 1]
        [--extrapolate-official 8] [--probe-lengths 0 32 64 96 128 160 192 224 255]
        [--out benchmarks/results/elm.json]

Sampling is ``sample_fid.sh``'s (the FID protocol): 256 positions, CFG 4.0 on the official linear ramp
(1 + 3 (step + 1) / 256), top-k 1000 per head, temperature 1; the labels are sample.py's eight
(the first ``batch`` of them). The official loop has no KV cache: every step re-runs the class token and the
whole prefix, the batch doubled with the null class (256 forward passes over 1..256 rows each); argen's ``ar``
prefills the class token once and decodes one position per pass; ``sjd`` verifies a window of drafts per pass.

``--official DIR`` is a work tree of the official repository (only ``llama/`` is read); its ``llama.ar_model``
is imported at run time, nothing of it is copied here. The model is built as ``sample_fid.py`` builds it:
``GPT_models['GPT-L'](pos_type='rope2d', token_each=2, code_dim=12, vocab_size=16384, block_size=256,
num_classes=1000, ...)`` (dropouts are off in eval()). ``ar_model.py`` imports ``einops`` without using it;
when einops is not installed an empty stand-in module is registered under that name (its functions raise
if ever called). Nothing else is patched. Without ``--official`` the script stops and says so.

Weights: one random state dict drawn with ``--seed`` from the official model's own keys (every Linear /
Embedding weight N(0, 0.02^2) -- the output heads too: the official init zeroes them, which would make every
logit 0 --, RMSNorm weights 1 + N(0, 0.1^2)), loaded strictly into the official model and into argen's
``ELM(ELMConfig.preset("L", token_each=2, code_dim=12))``.

Equality, before timing: (1) teacher-forced logits of both models on random ids (official forward vs argen's
``include_last`` forward, the official (position, head) row layout), max abs difference and argmax agreement;
(2) a short seeded run: the official ``generate_cfg(idx=None, num_iter=8)`` (global RNG seeded as
sample_fid.py seeds it) against argen's KV-cached token loop stopped after 8 positions (``length=8``: the
linear ramp then spans 8 steps, as the official one with num_iter 8) with ``torch.Generator().manual_seed``:
identical ids expected; (3) after timing, every full official run's ids against argen ``ar``'s with the
same seed (positions that agree; identical expected, float rounding between the two orders of computation
could in principle flip a near-tie draw and everything after it).

Timing: wall time of one full 256-position generation per row (``--repeats`` runs, median, the order of
rows reversed on odd repeats); ``speedup_vs_official`` = official seconds / row seconds in the same run.
``cpu_seconds`` (process CPU time) and the load averages at start and end are recorded too: on a shared
machine the wall times move with other jobs' load, the ratio less so.
For the batch sizes in ``--extrapolate-official`` the official row is NOT a full run: one official step
(``generate_cfg`` with ``num_iter=1`` on a given prefix of l positions -- the official outpainting path,
exactly the per-step work of the full loop at step l) is timed at ``--probe-lengths``, linearly
interpolated and summed over l = 0..255; such rows say ``"official_timing": "extrapolated"``. Where a full
official run exists at the same batch the same extrapolation is also reported, as a check of the method.

On random weights the next-position distribution is wide (top-k 1000 of 4096 per head), so SJD's drafts are
rarely accepted: the sjd rows measure what a wide verification pass costs here, not SJD's gain on a trained
model.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from argen import samplers
from argen.generators.elm import ELM, ELMConfig
from argen.samplers.ar import token_by_token
from argen.samplers.logits import SamplingOptions, draw_position

LABELS = [207, 360, 387, 974, 88, 979, 417, 4]  # sample.py's eight (its README says the last is 279)
SAMPLING = {"cfg_scale": 4.0, "cfg_schedule": "linear", "top_k": 1000, "temperature": 1.0}  # sample_fid.sh
POSITIONS = 256


def import_official(root: Path):
    """``llama.ar_model`` from the official work tree (an empty einops stand-in if einops is missing)."""
    if not (root / "llama" / "ar_model.py").is_file():
        sys.exit(f"--official {root}: no llama/ar_model.py there (a work tree of Pepper-lll/LMforImageGeneration)")
    stubbed = False
    try:
        import einops  # noqa: F401
    except ImportError:
        stub = types.ModuleType("einops")

        def unused(*_a, **_k):
            raise RuntimeError("einops stand-in: the benchmark assumed ar_model.py never calls einops")

        for name in ("rearrange", "reduce", "pack", "unpack"):
            setattr(stub, name, unused)
        sys.modules["einops"] = stub
        stubbed = True
    sys.path.insert(0, str(root))
    import llama.ar_model as ar_model

    return ar_model, stubbed


def random_state(official: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in official.state_dict().items():
        if k.endswith("norm.weight"):  # RMSNorm scales
            state[k] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            state[k] = 0.02 * torch.randn(v.shape, generator=g)
    return state


def argen_short_run(elm: ELM, labels: torch.Tensor, seed: int, length: int) -> torch.Tensor:
    opts = SamplingOptions(SAMPLING["cfg_scale"], cfg_schedule=SAMPLING["cfg_schedule"],
                           temperature=SAMPLING["temperature"], top_k=SAMPLING["top_k"], cfg_progress="elm")
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        codes, _ = token_by_token(elm, labels, opts, lambda i, lg: draw_position(lg, opts, gen), "ar",
                                  progress=False, callback=None, callback_every=16, compile=False, length=length)
    return codes


def equality_checks(official, elm: ELM, seed: int) -> dict:
    labels = torch.tensor(LABELS[:2])
    ids = torch.randint(0, 4096, (2, POSITIONS, 2), generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        ref, _, _ = official(idx=ids, cond=labels)  # (B, 257 * 2, V): row p * 2 + g
        ours = elm(ids, labels, include_last=True).flatten(1, 2)
    tf = {"max_abs_diff": float((ref - ours).abs().max()), "logit_std": float(ref.std()),
          "argmax_agree": float((ref.argmax(-1) == ours.argmax(-1)).float().mean())}
    steps = 8
    torch.manual_seed(seed)
    ref_ids, _ = official.generate_cfg(idx=None, cond=labels, num_iter=steps, **SAMPLING)
    our_ids = argen_short_run(elm, labels, seed, steps)
    short = {"batch": 2, "steps": steps, "identical": bool(torch.equal(ref_ids, our_ids)),
             "positions_agreeing": int((ref_ids == our_ids).all(-1).sum())}
    return {"teacher_forced_logits": tf, "short_run": short,
            "passed": short["identical"] and tf["argmax_agree"] == 1.0 and tf["max_abs_diff"] < 1e-3}


def official_step_time(official, labels: torch.Tensor, length: int, seed: int) -> float:
    """One official step with a prefix of ``length`` positions (generate_cfg's outpainting path, num_iter 1)."""
    prefix = torch.randint(0, 4096, (labels.shape[0], length, 2), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    t = time.perf_counter()
    official.generate_cfg(idx=prefix if length else None, cond=labels, num_iter=1, **SAMPLING)
    return time.perf_counter() - t


def extrapolate(official, labels: torch.Tensor, lengths: list[int], seed: int) -> dict:
    official_step_time(official, labels, 1, seed)  # warm-up
    probes = {n: official_step_time(official, labels, n, seed) for n in lengths}
    xs = sorted(probes)
    total = 0.0
    for n in range(POSITIONS):  # piecewise-linear interpolation (linear extrapolation past the ends)
        j = min(max(sum(x <= n for x in xs) - 1, 0), len(xs) - 2)
        x0, x1 = xs[j], xs[j + 1]
        total += probes[x0] + (probes[x1] - probes[x0]) * (n - x0) / (x1 - x0)
    return {"probe_lengths": xs, "probe_step_seconds": [round(probes[x], 4) for x in xs],
            "seconds": round(total, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", type=Path, help="work tree of Pepper-lll/LMforImageGeneration (required)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--window", type=int, nargs="+", default=[16, 32], help="sjd windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--extrapolate-official", type=int, nargs="*", default=[], metavar="BATCH",
                   help="batch sizes whose official time is extrapolated from per-step probes, not a full run")
    p.add_argument("--probe-lengths", type=int, nargs="*", default=[0, 32, 64, 96, 128, 160, 192, 224, 255],
                   help="prefix lengths of the per-step probes (empty: none where a full official run exists)")
    p.add_argument("--out", default="benchmarks/results/elm.json")
    args = p.parse_args()
    if args.official is None:
        sys.exit("the official timing needs --official DIR, a work tree of Pepper-lll/LMforImageGeneration, e.g.\n"
                 "  mkdir -p /tmp/elm_official && git -C <mirror> archive HEAD | tar -x -C /tmp/elm_official")
    if max(args.batch) > len(LABELS):
        sys.exit(f"--batch at most {len(LABELS)} (sample.py's labels)")
    if len(set(args.probe_lengths)) == 1 or (args.extrapolate_official and not args.probe_lengths):
        sys.exit("--probe-lengths: at least two lengths (or none, where every official row is a full run)")
    if any(not 0 <= x < POSITIONS for x in args.probe_lengths):
        sys.exit(f"--probe-lengths lie in [0, {POSITIONS})")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    ar_model, stubbed = import_official(args.official.resolve())

    official = ar_model.GPT_models["GPT-L"](
        attn_type="sdp", use_adaLN=False, pos_type="rope2d", token_each=2, code_dim=12, vocab_size=16384,
        block_size=POSITIONS, num_classes=1000, resid_dropout_p=0.1, ffn_dropout_p=0.1, drop_path_rate=0.0,
        token_dropout_p=0.0).eval()
    state = random_state(official, args.seed)
    official.load_state_dict(state, strict=True)
    elm = ELM(ELMConfig.preset("L", token_each=2, code_dim=12)).eval()
    elm.load_state_dict(state, strict=True)
    del state
    n_params = sum(t.numel() for t in elm.parameters())
    print(f"ELM-L 2-12: {n_params / 1e6:.1f}M parameters; threads {torch.get_num_threads()}", flush=True)

    eq = equality_checks(official, elm, args.seed)
    print("equality:", json.dumps(eq), flush=True)

    rows, full_run_checks, extrapolations = [], [], []
    for b in args.batch:
        labels = torch.tensor(LABELS[:b])
        runs, ids = {}, {}

        def argen_run(name: str, **kw):
            def run():
                codes, stats = samplers.sample(elm, labels, generator=torch.Generator().manual_seed(args.seed),
                                               **SAMPLING, **kw)
                ids[name] = codes
                return stats
            return run

        runs["argen ar"] = argen_run("argen ar", sampler="ar")
        for w in args.window:
            runs[f"argen sjd window={w}"] = argen_run(f"argen sjd window={w}", sampler="sjd", window=w)
        full_official = b not in args.extrapolate_official
        if full_official:
            def official_run():
                torch.manual_seed(args.seed)  # sample_fid.py seeds the global generator
                out, _ = official.generate_cfg(idx=None, cond=labels, num_iter=POSITIONS, **SAMPLING)
                ids["official generate_cfg"] = out
                return None
            runs["official generate_cfg"] = official_run

        times: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        stats_of = {}
        for r in range(args.repeats):
            for name in runs if r % 2 == 0 else list(runs)[::-1]:
                print(f"batch {b}: {name} (repeat {r + 1}/{args.repeats}) ...", flush=True)
                t, c = time.perf_counter(), time.process_time()
                stats = runs[name]()
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                if stats is not None:
                    stats_of[name] = stats
                print(f"  {times[name][-1]:.2f} s", flush=True)

        ext = None
        if args.probe_lengths or not full_official:
            print(f"batch {b}: official per-step probes at {args.probe_lengths} ...", flush=True)
            ext = extrapolate(official, labels, args.probe_lengths, args.seed)
            ext = {"batch": b, **ext}
            if full_official:
                ext["full_run_seconds"] = round(statistics.median(times["official generate_cfg"]), 3)
            extrapolations.append(ext)
            print("  ", json.dumps(ext), flush=True)
        if full_official:
            off_s, off_kind = statistics.median(times["official generate_cfg"]), "full run"
        else:
            off_s, off_kind = ext["seconds"], "extrapolated"

        for name, ts in times.items():
            med = statistics.median(ts)
            row = {"batch": b, "sampler": name, "seconds": round(med, 3), "all_seconds": [round(t, 3) for t in ts],
                   "images_per_s": round(b / med, 5), "cpu_seconds": round(statistics.median(cpu[name]), 3)}
            if name in stats_of:
                st = stats_of[name]
                row.update(forward_passes=st.forward_passes, tokens_per_pass=round(st.tokens_per_pass, 4),
                           sampler_wall_time_s=round(st.wall_time_s, 3))
                if name.startswith("argen sjd"):
                    row["accept_histogram"] = st.accept_histogram
            else:
                row.update(forward_passes=POSITIONS, tokens_per_pass=1.0,
                           rows_per_pass="2B x (1 + prefix length): the whole prefix every step")
            row["official_timing"] = off_kind
            row["speedup_vs_official"] = round(off_s / med, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if not full_official:
            rows.append({"batch": b, "sampler": "official generate_cfg", "seconds": ext["seconds"],
                         "images_per_s": round(b / ext["seconds"], 5), "forward_passes": POSITIONS,
                         "tokens_per_pass": 1.0, "official_timing": "extrapolated", "speedup_vs_official": 1.0,
                         "note": "EXTRAPOLATED from per-step probes (see official_extrapolations), not a full run"})
            print(json.dumps(rows[-1]), flush=True)
        for name in [k for k in ids if k.startswith("argen")]:
            if "official generate_cfg" in ids and name == "argen ar":
                ref, ours = ids["official generate_cfg"], ids[name]
                agree = (ref == ours).all(-1)  # (B, N): position agrees in both sub-tokens
                first = [int(a.logical_not().nonzero()[0]) if not a.all() else None for a in agree]
                full_run_checks.append({"batch": b, "rows": ["official generate_cfg", name],
                                        "identical": bool(torch.equal(ref, ours)),
                                        "positions_agreeing": int(agree.sum()), "positions": int(agree.numel()),
                                        "first_disagreement_per_image": first})
                print("full-run ids:", json.dumps(full_run_checks[-1]), flush=True)

    report = {
        "model": "ELM-L 2-12 (GPT-L, token_each 2, code_dim 12), random weights",
        "parameters": n_params, "positions": POSITIONS, "labels": LABELS, "seed": args.seed,
        "sampling": SAMPLING | {"source": "sample_fid.sh (FID protocol)"},
        "official": {"code": "Pepper-lll/LMforImageGeneration llama/ar_model.py Transformer.generate_cfg, "
                             "imported at run time", "work_tree": str(args.official),
                     "einops_stand_in": stubbed},
        "equality": eq, "full_run_id_checks": full_run_checks, "official_extrapolations": extrapolations,
        "repeats": args.repeats, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "platform": platform.platform(), "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "loadavg_1_5_15min": {"start": [round(x, 2) for x in load_start],
                              "end": [round(x, 2) for x in os.getloadavg()]},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
