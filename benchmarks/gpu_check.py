"""The GPU check (``scripts/gpu_check.sh``): on a CUDA machine, one command, one JSON.

Sections, in this order (``--sections`` picks some):

* ``tests``: tests/test_official_fixtures.py with the official fixtures on CUDA (float32 with the CPU
  tolerances, TF32 off; its bfloat16 test with its own: logits within 0.1, greedy ids >= 90 % equal)
  and tests/test_compile.py (the compiled decode step under CUDA graphs gives the eager tokens), via
  benchmarks/device_plugin.py. Deselected: the one test bound to the CPU random stream.
* ``attention``: each attention kernel (SDPA flash, memory-efficient, cuDNN; xformers when it imports)
  through argen's ``attention()`` against the math backend, on the shapes argen runs: causal prefill,
  one-token decode, a causal window over a longer cache, ragged per-row masks, the compiled step's
  position mask over the whole cache, grouped-query heads; float16, bfloat16, float32.
* ``ar``: LlamaGen GPT-XL and GPT-B at 576 tokens (384 px; the zoo's ``-384`` architectures, random
  weights), cfg 4, top-k 2000, batch 1 and 8, bfloat16 and float32: argen eager, ``compile=True`` and
  the official-style loop (benchmarks/official_style.py), same seeds, runs interleaved. Anchor:
  LlamaGen-XL, 576 tokens, one A100: 19.8 s eager, 4.8 s with vLLM.
* ``families``: VAR-d16, MAR-B, FlowAR-S (random weights, benchmarks/bench_families.py's settings),
  float32, batch 1 and 8.

Without CUDA it stops with a one-line reason; ``--dry-run`` runs every section on the CPU at toy sizes
(a 2-layer LlamaGen at 16 tokens, the families' warm-up settings, batch 1) to check the script itself.
The JSON is rewritten after every item, so a run cut short keeps what it measured, and ``--budget-s``
records what would start later than that as skipped. A full run on one H100 is estimated at 10-15
minutes, most of it compiling (one graph per model, dtype and batch); to fit a 10-minute command, split
it: ``--sections tests attention families``, then ``--sections ar``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

SECTIONS = ("tests", "attention", "ar", "families")
AR_ZOO = {"GPT-XL": "llamagen-gpt-xl-384", "GPT-B": "llamagen-gpt-b-384"}
ANCHOR = {"what": "LlamaGen-XL c2i, 576 tokens, one A100 (LlamaGen's README)", "eager_s": 19.8, "vllm_s": 4.8,
          "goal": "compile=True on one H100 at or below vllm_s"}
CPU_RNG_TEST = "tests/test_official_fixtures.py::test_seeded_sampling_matches_official_rng_stream"
# max |kernel - math| on unit-variance inputs: a few output ulps (half-precision kernels round the
# softmax weights before P @ V); float32 at round-off (TF32 or a half-precision path would fail it)
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 4e-2, torch.float32: 1e-4}


class Report:
    """The one JSON: sections filled in as they finish, written after every item."""

    def __init__(self, path: Path, args: argparse.Namespace, device: torch.device, t0: float) -> None:
        self.path, self.t0, self.budget = path, t0, args.budget_s
        self.data = {"benchmark": "argen GPU check", "dry_run": args.dry_run, "machine": machine(device),
                     "anchor": ANCHOR, "sections": {}, "ok": None}
        self.write()

    def left_s(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def section(self, name: str) -> dict:
        return self.data["sections"].setdefault(name, {})

    def write(self) -> None:
        self.data["elapsed_s"] = time.monotonic() - self.t0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")


def machine(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "device": str(device), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    cudnn=torch.backends.cudnn.version())
    for mod in ("triton", "xformers"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as exc:  # not installed, or a broken build
            info[mod] = f"unavailable ({type(exc).__name__})"
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- tests --------------------------------------------------------------------------------------------
def run_tests(report: Report, device: torch.device, dry: bool) -> bool:
    files = ["tests/test_official_fixtures.py", "tests/test_compile.py"]
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "device_plugin", *files, "--junitxml", str(junit)]
        if device.type != "cpu":
            cmd += ["--deselect", CPU_RNG_TEST]
        env = {**os.environ, "ARGEN_TEST_DEVICE": str(device),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
        t = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=max(report.left_s(), 60))
            out, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            out, rc = f"{exc.stdout or ''}{exc.stderr or ''}\npytest timed out", -1
        cases = parse_junit(junit) if junit.is_file() else []
    failed = [c for c in cases if c["outcome"] in ("failed", "error")]
    report.section("tests").update({
        "device": str(device), "files": files, "deselected": [] if device.type == "cpu" else [CPU_RNG_TEST],
        "returncode": rc, "seconds": time.monotonic() - t,
        "passed": sum(c["outcome"] == "passed" for c in cases), "failed": len(failed),
        "skipped": sum(c["outcome"] == "skipped" for c in cases), "failures": failed, "cases": cases,
        "output_tail": out[-3000:],
    })
    report.write()
    print(f"tests on {device}: rc {rc}, {len(cases) - len(failed)} ok / {len(failed)} failed", flush=True)
    return rc == 0


def parse_junit(path: Path) -> list[dict]:
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (el.get("message") or "")[:500]
        cases.append({"test": f"{tc.get('classname')}::{tc.get('name')}", "outcome": outcome,
                      "seconds": float(tc.get("time") or 0), **({"message": message} if message else {})})
    return cases


# -- attention -----------------------------------------------------------------------------------------
def attention_cases(dry: bool) -> dict[str, dict]:
    """Shapes argen runs (GPT-XL: 20 heads of 64; 577 cache positions; the SJD window 16)."""
    s = 4 if dry else 1
    return {
        "prefill_causal": dict(b=2, h=20, tq=577 // s, tk=577 // s, causal=True),
        "decode_one_token": dict(b=16, h=20, tq=1, tk=577 // s),
        "window_causal_over_cache": dict(b=4, h=20, tq=16, tk=300 // s, causal=True),
        "ragged_rows_mask": dict(b=4, h=20, tq=16, tk=300 // s, mask="ragged"),
        "compiled_step_position_mask": dict(b=16, h=20, tq=1, tk=577 // s, mask="position"),
        "grouped_query_heads": dict(b=2, h=16, hkv=4, tq=1, tk=257 // s),
    }


def attention_inputs(case: dict, dtype: torch.dtype, device: torch.device):
    from argen.nn.kv_cache import position_mask

    g = torch.Generator(device="cpu").manual_seed(0)
    b, h, tq, tk, d = case["b"], case["h"], case["tq"], case["tk"], 64
    hkv = case.get("hkv", h)
    q = torch.randn(b, h, tq, d, generator=g)
    k, v = torch.randn(b, hkv, tk, d, generator=g), torch.randn(b, hkv, tk, d, generator=g)
    mask = None
    if case.get("mask") == "ragged":  # rows at different lengths, a causal window after each
        start = torch.randint(0, tk - tq + 1, (b,), generator=g)
        mask = position_mask(start[:, None] + torch.arange(tq), tk)
    elif case.get("mask") == "position":
        mask = position_mask(torch.randint(0, tk, (b, 1), generator=g), tk)
    to = dict(device=device, dtype=dtype)
    return q.to(**to), k.to(**to), v.to(**to), None if mask is None else mask.to(device)


def kernels(device: torch.device) -> dict[str, object]:
    from torch.nn.attention import SDPBackend

    found = {"sdpa_default": None}  # whichever kernel torch picks: what argen runs by default
    if device.type != "cuda":  # the CPU has one fused SDPA kernel (flash-style) beside math
        return found
    found.update(sdpa_flash=SDPBackend.FLASH_ATTENTION, sdpa_efficient=SDPBackend.EFFICIENT_ATTENTION)
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        found["sdpa_cudnn"] = SDPBackend.CUDNN_ATTENTION
    return found


def run_attention(report: Report, device: torch.device, dry: bool) -> bool:
    from torch.nn.attention import sdpa_kernel

    from argen.nn import attention, resolve_backend

    sec = report.section("attention")
    sec["tolerance_max_abs_diff"] = {str(k): v for k, v in TOLERANCE.items()}
    sec["reference"] = "argen's math backend (float32 softmax(QK^T)V) on the same inputs"
    xformers = resolve_backend("xformers", device) == "xformers"
    sec["xformers"] = "tested" if xformers else "not available here (argen falls back to sdpa): not tested"
    results, ok = [], True
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for name, case in attention_cases(dry).items():
            q, k, v, mask = attention_inputs(case, dtype, device)
            kw = dict(mask=mask, causal=case.get("causal", False))
            ref = attention(q, k, v, backend="math", **kw).float()
            for kname, kern in [*kernels(device).items(), *([("xformers", None)] if xformers else [])]:
                row = {"case": name, "dtype": str(dtype).removeprefix("torch."), "kernel": kname}
                try:
                    with warnings.catch_warnings(record=True) as why:  # torch says why a kernel declines
                        warnings.simplefilter("always")
                        if kname == "xformers":
                            out = attention(q, k, v, backend="xformers", **kw)
                        elif kern is None:
                            out = attention(q, k, v, backend="sdpa", **kw)
                        else:
                            with sdpa_kernel([kern]):
                                out = attention(q, k, v, backend="sdpa", **kw)
                        sync(device)
                except RuntimeError as exc:  # the kernel does not take this dtype / mask / head layout
                    reasons = ([str(w.message).strip().splitlines()[0] for w in why]
                               or [str(exc).strip().splitlines()[0]])
                    row.update(status="unsupported", reason="; ".join(reasons)[:300])
                    results.append(row)
                    continue
                err = (out.float() - ref).abs().max().item()
                good = err <= TOLERANCE[dtype]
                ok &= good
                row.update(status="ok" if good else "FAIL", max_abs_diff=err)
                results.append(row)
    sec.update(results=results, failed=sum(r["status"] == "FAIL" for r in results),
               passed=sum(r["status"] == "ok" for r in results),
               unsupported=sum(r["status"] == "unsupported" for r in results))
    report.write()
    print(f"attention: {sec['passed']} ok, {sec['failed']} FAIL, {sec['unsupported']} unsupported", flush=True)
    return ok


# -- AR: LlamaGen eager / compiled / official-style -------------------------------------------------------
def llamagen(name: str, device: torch.device, dtype: torch.dtype, dry: bool):
    import argen

    if dry:  # a 2-layer GPT-B-shaped model with the bench's random weights
        torch.manual_seed(0)
        from argen.generators import LlamaGen, LlamaGenConfig

        model = LlamaGen(LlamaGenConfig(dim=128, n_layer=2, n_head=2, vocab_size=256, block_size=16, num_classes=1000))
        model.init_weights()
        torch.nn.init.normal_(model.output.weight, std=0.02)
        return model.eval().requires_grad_(False).to(device=device, dtype=dtype)
    return argen.load(AR_ZOO[name], random_weights=True, device=device, dtype=dtype).generator.requires_grad_(False)


def failure(exc: Exception) -> dict:
    """What the JSON records of a check that raised: the error, and the end of its traceback."""
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}


def timed(device: torch.device, fn):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def bench_llamagen(model, device: torch.device, batch: int, repeats: int) -> dict:
    from bench_ar import CFG, TOP_K, ShortRun, classes_for, compiled_check
    from official_style import official_generate

    import argen.samplers as S

    classes = classes_for(batch)
    n = model.seq_len

    def eager(seed, m=model):
        return S.sample(m, classes, seed=seed, cfg_scale=CFG, top_k=TOP_K)[0]

    def compiled(seed):
        return S.sample(model, classes, seed=seed, cfg_scale=CFG, top_k=TOP_K, compile=True)[0]

    def official(seed, tokens=None):
        gen = torch.Generator(device=device).manual_seed(seed)
        return official_generate(model, classes, tokens, cfg_scale=CFG, top_k=TOP_K, generator=gen)[0]

    timed(device, lambda: eager(0, ShortRun(model, 8)))  # warm-up: kernels, allocator
    timed(device, lambda: official(0, 8))
    check, first_s = timed(device, lambda: compiled_check(model, classes, 8))  # compiles + records the graph
    arms = {"eager": eager, "compiled": compiled, "official_style": official}
    walls: dict[str, list[float]] = {a: [] for a in arms}
    agree_c, agree_o = [], []
    names = list(arms)
    for r in range(repeats):
        codes = {}
        for a in names[r % 3:] + names[: r % 3]:
            codes[a], wall = timed(device, lambda a=a: arms[a](r))
            walls[a].append(wall)
        agree_c.append((codes["compiled"] == codes["eager"]).float().mean().item())
        agree_o.append((codes["official_style"] == codes["eager"]).float().mean().item())
    med = {a: statistics.median(w) for a, w in walls.items()}
    return {
        "batch": batch, "tokens": n, "rows_per_step": 2 * batch,
        **{f"{a}_s": med[a] for a in arms},
        **{f"{a}_s_per_image": med[a] / batch for a in arms},
        **{f"{a}_tokens_per_s": batch * n / med[a] for a in arms},
        "compiled_speedup_vs_eager": med["eager"] / med["compiled"],
        "compiled_speedup_vs_official_style": med["official_style"] / med["compiled"],
        "eager_speedup_vs_official_style": med["official_style"] / med["eager"],
        "compile_first_step_s": check["compile_s"], "compile_warmup_s": first_s,
        "compiled_vs_eager_first_steps": {k: v for k, v in check.items() if k != "compile_s"},
        "compiled_tokens_equal_to_eager_fraction": agree_c, "official_tokens_equal_to_eager_fraction": agree_o,
        "wall_s": walls,
    }


def run_ar(report: Report, device: torch.device, args: argparse.Namespace) -> bool:
    import torch._dynamo

    from argen.samplers.compiled import release

    sec = report.section("ar")
    sec.update(settings={"cfg_scale": 4.0, "top_k": 2000, "repeats": args.repeats,
                         "timing": "wall seconds per generate call, device synchronised; median over repeats",
                         "compile": "compile=True: torch.compile of the decode step"
                                    + (", mode reduce-overhead (CUDA graphs)" if device.type == "cuda" else "")},
               configs=sec.get("configs", []))
    ok = True
    for dname in args.dtypes:
        dtype = getattr(torch, dname)
        for name in (["tiny"] if args.dry_run else args.ar_models):
            model = None
            for batch in args.batch:
                entry = {"model": name, "dtype": dname, "batch": batch}
                if report.left_s() <= 0:
                    sec["configs"].append({**entry, "skipped": "budget"})
                    continue
                try:
                    model = model or llamagen(name, device, dtype, args.dry_run)
                    entry.update(bench_llamagen(model, device, batch, args.repeats))
                    if name == "GPT-XL":
                        entry["compiled_vs_vllm_anchor"] = entry["compiled_s"] / ANCHOR["vllm_s"]
                    if dtype == torch.float32:  # float32 compiled must give the eager tokens
                        ok &= min(entry["compiled_tokens_equal_to_eager_fraction"]) == 1.0
                except Exception as exc:
                    ok = False
                    entry.update(failure(exc))
                sec["configs"].append(entry)
                report.write()
                print(json.dumps({k: v for k, v in entry.items() if not isinstance(v, (dict, list)) or k == "error"}),
                      flush=True)
            if model is not None:
                release(model)
                del model
                torch._dynamo.reset()  # frees the graphs (and CUDA graph pools) of this model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return ok


# -- VAR / MAR / FlowAR -------------------------------------------------------------------------------------
def run_families(report: Report, device: torch.device, args: argparse.Namespace) -> bool:
    from bench_families import CLASSES, SETTINGS, WARMUP

    import argen

    sec = report.section("families")
    sec.update(dtype="float32", results=sec.get("results", []))
    ok = True
    for name in args.families:
        entry = {"model": name}
        if report.left_s() <= 0:
            sec["results"].append({**entry, "skipped": "budget"})
            continue
        try:
            pipe = argen.load(name, random_weights=True, device=device)
            family = argen.zoo.OFFICIAL[name].family
            opts = {**pipe.defaults, **SETTINGS[family], **(WARMUP[family] if args.dry_run else {})}
            timed(device, lambda: pipe.generate([CLASSES[0]], seed=0, output_type="pt",
                                                **{**opts, **WARMUP[family]}))  # warm-up
            entry.update(family=family, sampling=opts, results=[])
            for bs in args.batch:
                labels = [CLASSES[i % len(CLASSES)] for i in range(bs)]
                walls = [timed(device, lambda r=r: pipe.generate(labels, seed=r, output_type="pt", **opts))[1]
                         for r in range(args.repeats)]
                med = statistics.median(walls)
                entry["results"].append({"batch": bs, "s_per_image": med / bs, "images_per_s": bs / med,
                                         "wall_s": walls})
            pipe = None  # frees the model before the next one loads
        except Exception as exc:
            ok = False
            entry.update(failure(exc))
        sec["results"].append(entry)
        report.write()
        print(json.dumps({k: v for k, v in entry.items() if k != "traceback"}), flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/gpu_check.json")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--dry-run", action="store_true", help="no CUDA needed: every section on the CPU at toy sizes")
    p.add_argument("--budget-s", type=float, default=540.0, help="start nothing new after this many seconds")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--batch", type=int, nargs="+", default=None, help="default: 1 8 (dry run: 1)")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32", "float16"])
    p.add_argument("--ar-models", nargs="+", default=list(AR_ZOO), choices=list(AR_ZOO))
    p.add_argument("--families", nargs="+", default=["var-d16", "mar-base", "flowar-s"])
    args = p.parse_args(argv)
    t0 = time.monotonic()
    if args.dry_run:
        device = torch.device("cpu")
        args.batch = args.batch or [1]
    elif not torch.cuda.is_available():
        why = ("a CPU-only build" if torch.version.cuda is None
               else f"built for CUDA {torch.version.cuda}, no device visible")
        print(f"gpu_check: no CUDA device (torch {torch.__version__}: {why}); run it on a CUDA machine, "
              "or with --dry-run to exercise its CPU-runnable parts at toy sizes", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
        args.batch = args.batch or [1, 8]
    torch.set_grad_enabled(False)
    report = Report(REPO / args.out if not Path(args.out).is_absolute() else Path(args.out), args, device, t0)
    runs = {"tests": lambda: run_tests(report, device, args.dry_run),
            "attention": lambda: run_attention(report, device, args.dry_run),
            "ar": lambda: run_ar(report, device, args),
            "families": lambda: run_families(report, device, args)}
    ok = True
    for name in SECTIONS:
        if name not in args.sections:
            continue
        if report.left_s() <= 0:
            report.section(name)["skipped"] = "budget"
            continue
        ok &= bool(runs[name]())
    report.data["ok"] = ok
    report.write()
    print(f"gpu_check: {'all checks passed' if ok else 'FAILURES (see the JSON)'}; {report.path} "
          f"({time.monotonic() - t0:.0f} s)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
