"""image-GPT-S (random weights, 1,024 pixels): argen's ar and sjd against transformers' own
``ImageGPTForCausalImageModeling.generate()`` (its KV cache, the model card's sampling: top-k 40,
temperature 1), the same weights, batch 1 and 8, one process. transformers is imported here, at run time.

    python benchmarks/bench_igpt.py [--preset igpt-s] [--batch 1 8] [--repeats 1] [--out benchmarks/results/igpt.json]

A random model's next-pixel distribution is wide, so SJD's drafts are rarely accepted: this measures
what a wide pass costs on this model, not SJD's gain (for that: ``argen bench --model shapes-pixel``).
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
from argen.generators.igpt import PRESETS


def transformers_model(pipe: argen.ARPipeline):
    """transformers' model holding argen's (random) weights: the key names are the same."""
    from transformers import ImageGPTConfig, ImageGPTForCausalImageModeling

    c = pipe.generator.config
    hf = ImageGPTForCausalImageModeling(ImageGPTConfig(
        vocab_size=c.vocab_size, n_positions=c.n_positions, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    hf.load_state_dict(pipe.generator.state_dict(), strict=True)
    return hf.eval()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="igpt-s", choices=list(PRESETS))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--window", type=int, nargs="+", default=[16, 32], help="sjd windows")
    p.add_argument("--out", default="benchmarks/results/igpt.json")
    args = p.parse_args()
    pipe = argen.load(args.preset, random_weights=True)
    hf = transformers_model(pipe)
    sampling = {"top_k": 40, "temperature": 1.0}
    n, sos = pipe.generator.seq_len, pipe.generator.sos_id
    rows = []
    for b in args.batch:
        runs = {"argen ar": lambda: pipe.generate(num_images=b, seed=0, output_type="codes", **sampling)}
        for w in args.window:
            runs[f"argen sjd window={w}"] = (lambda w=w: pipe.generate(num_images=b, seed=0, sampler="sjd", window=w,
                                                                       output_type="codes", **sampling))

        def official() -> None:
            torch.manual_seed(0)
            with torch.inference_mode():
                out = hf.generate(input_ids=torch.full((b, 1), sos), max_length=n + 1, do_sample=True, top_k=40,
                                  temperature=1.0, pad_token_id=0)
            assert out.shape == (b, n + 1)

        runs["transformers generate()"] = official
        times: dict[str, list[float]] = {k: [] for k in runs}
        passes: dict[str, int] = {}
        for r in range(args.repeats):
            for name in runs if r % 2 == 0 else list(runs)[::-1]:
                t = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t)
                if name.startswith("argen"):
                    passes[name] = pipe.last_stats.forward_passes
        base = statistics.median(times["argen ar"])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append({"batch": b, "sampler": name, "seconds": round(med, 3), "images_per_s": round(b / med, 4),
                         "forward_passes": passes.get(name, n), "speedup_vs_argen_ar": round(base / med, 3)})
            print(json.dumps(rows[-1]), flush=True)
    report = {"model": f"{args.preset} (random weights)", "tokens_per_image": n, "sampling": sampling,
              "repeats": args.repeats, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
