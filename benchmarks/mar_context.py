"""How much a trained MAR uses its known tokens: the diffusion head's relative x0 error on masked tokens
at alpha-bar ~0.01 (nearly pure noise, so the prediction is the condition's own) by the number of known
tokens, on held-out shapes. A model that uses its context gets lower error as more tokens are known.

    python benchmarks/mar_context.py runs/shapes-mar [--out results.json]

RUN is an ``argen train generator --kind mar`` output folder (its EMA checkpoint and tokenizer are read).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from argen.data.shapes import ShapesDataset
from argen.generators import MAR, MARConfig
from argen.tokenizers import load_tokenizer


def context_errors(run: Path, images: int = 64, seed: int = 0) -> dict:
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    model = MAR(MARConfig(**state["config"]))
    model.load_state_dict(load_file(str(run / "checkpoint" / "ema.safetensors")))
    model.eval()
    tokenizer = load_tokenizer(state["tokenizer"])
    data = ShapesDataset(state["resolution"], "test")
    x = torch.stack([data[i][0] for i in range(images)])
    y = torch.tensor([data.label(i) for i in range(images)])
    diff = model.diffloss.train_diffusion
    ab_all = torch.as_tensor(diff.alphas_cumprod).float()
    t_index = int((ab_all - 0.01).abs().argmin())
    ab = ab_all[t_index]
    out = {}
    with torch.no_grad():
        tokens = model.patchify(tokenizer.encode(x, sample=state.get("latents", "sample") == "sample"))
        g = torch.Generator().manual_seed(seed)
        orders = model.random_orders(images, g)
        target = tokens.reshape(-1, tokens.shape[-1])
        n = model.seq_len
        for known in sorted({0, 4, n // 4, n // 2, 3 * n // 4, n - 4}):
            mask = torch.ones(images, n).scatter(1, orders[:, :known], 0.0)
            z = model.conditions(tokens, mask, model.class_emb(y)).reshape(-1, model.config.decoder_embed_dim)
            noise = torch.randn(target.shape, generator=g)
            t = torch.full((target.shape[0],), t_index)
            x_t = diff.q_sample(target, t, noise)
            eps = model.diffloss.net(x_t, t, z)[:, : target.shape[1]]
            x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
            m = mask.reshape(-1).bool()
            out[known] = round(((x0 - target)[m] ** 2).mean().item() / target.var(0).mean().item(), 4)
    return {"run": str(run), "step": state["step"], "alpha_bar": round(float(ab), 4), "images": images,
            "relative_x0_error_by_known": out}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    result = context_errors(a.run, a.images)
    print(json.dumps(result))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))
