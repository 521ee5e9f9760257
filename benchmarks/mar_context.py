"""How much a trained MAR uses its known tokens, on held-out shapes.

1. The diffusion head's relative x0 error on masked tokens at alpha-bar ~0.01 (nearly pure noise, so the
   prediction is the condition's own) by the number of known tokens, with the true class and with the
   null class: a model that uses its context gets lower error as more tokens are known, and one that
   uses the class gets lower error with it.
2. ``--completion``: K tokens of each real image are given (the first K of a random order), the model
   generates the rest (16 passes, constant guidance), and the shapes judge scores the result, by K; plus
   K = 0 in raster order, one token per pass. Where accuracy climbs fast with K, the model completes
   shapes well and fails at its first guesses.

    python benchmarks/mar_context.py runs/shapes-mar [--completion] [--out results.json]

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
from argen.samplers.mar import generation_orders
from argen.tokenizers import load_tokenizer


def _load(run: Path, images: int):
    """The run's EMA MAR, its tokenizer, its meta, and ``images`` held-out shapes with their labels."""
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    model = MAR(MARConfig(**state["config"]))
    model.load_state_dict(load_file(str(run / "checkpoint" / "ema.safetensors")))
    model.eval()
    tokenizer = load_tokenizer(state["tokenizer"])
    data = ShapesDataset(state["resolution"], "test")
    x = torch.stack([data[i][0] for i in range(images)])
    y = torch.tensor([data.label(i) for i in range(images)])
    return model, tokenizer, state, x, y


def context_errors(run: Path, images: int = 64, seed: int = 0) -> dict:
    model, tokenizer, state, x, y = _load(run, images)
    diff = model.diffloss.train_diffusion
    ab_all = torch.as_tensor(diff.alphas_cumprod).float()
    t_index = int((ab_all - 0.01).abs().argmin())
    ab = ab_all[t_index]
    out, out_null = {}, {}
    with torch.no_grad():
        tokens = model.patchify(tokenizer.encode(x, sample=state.get("latents", "sample") == "sample"))
        g = torch.Generator().manual_seed(seed)
        orders = model.random_orders(images, g)
        target = tokens.reshape(-1, tokens.shape[-1])
        n = model.seq_len
        for known in sorted({0, 4, n // 4, n // 2, 3 * n // 4, n - 4}):
            mask = torch.ones(images, n).scatter(1, orders[:, :known], 0.0)
            noise = torch.randn(target.shape, generator=g)
            t = torch.full((target.shape[0],), t_index)
            x_t = diff.q_sample(target, t, noise)
            m = mask.reshape(-1).bool()
            for emb, errors in ((model.class_embedding(y), out), (model.class_embedding(None, images), out_null)):
                z = model.conditions(tokens, mask, emb).reshape(-1, model.config.decoder_embed_dim)
                eps = model.diffloss.net(x_t, t, z)[:, : target.shape[1]]
                x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
                errors[known] = round(((x0 - target)[m] ** 2).mean().item() / target.var(0).mean().item(), 4)
    return {"run": str(run), "step": state["step"], "alpha_bar": round(float(ab), 4), "images": images,
            "relative_x0_error_by_known": out, "null_class_relative_x0_error_by_known": out_null}


def completion_accuracy(run: Path, images: int = 60, seed: int = 0, cfg: float = 3.0, temperature: float = 1.0) -> dict:
    from argen.eval.shapes import load_judge

    model, tokenizer, state, x, y = _load(run, images)
    judge, n = load_judge(), model.seq_len
    g = torch.Generator().manual_seed(seed)
    emb = torch.cat([model.class_embedding(y), model.class_embedding(None, images)])
    out = {}
    with torch.no_grad():
        real = model.patchify(tokenizer.encode(x, sample=False))
        settings = [(k, "random") for k in (0, n // 8, n // 4, n // 2, 3 * n // 4)] + [(0, "raster")]
        for known, order in settings:
            first = generation_orders(model, images, order, g, x.device).flip(1)  # generated first, first
            mask = torch.ones(images, n, dtype=torch.bool).scatter(1, first[:, :known], False)
            tokens = real * (~mask)[..., None]
            per_pass = 1 if order == "raster" else max(1, (n - known) // 16)
            for s in range(known, n, per_pass):
                z = model.conditions(torch.cat([tokens, tokens]), torch.cat([mask, mask]), emb)
                new = torch.zeros_like(mask).scatter(1, first[:, s: s + per_pass], True)
                tokens[new] = model.diffloss.sample(torch.cat([z[:images][new], z[images:][new]]), temperature, cfg, g)
                mask &= ~new
            score = judge.score(tokenizer.decode(model.unpatchify(tokens)).clamp(-1, 1), y.tolist())
            out[f"{order}, {known} known"] = round(score["accuracy"], 3)
    return {"run": str(run), "step": state["step"], "images": images, "cfg": cfg, "temperature": temperature,
            "judged_accuracy": out}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--completion", action="store_true", help="judged accuracy of completions instead")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    result = completion_accuracy(a.run, a.images) if a.completion else context_errors(a.run, a.images)
    print(json.dumps(result))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))
