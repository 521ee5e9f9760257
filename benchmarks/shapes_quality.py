"""Class accuracy of a model's generated shapes, judged by a small CNN trained on the shapes set.

    python benchmarks/shapes_quality.py --model shapes-llamagen --per-class 20 --out results.json
    python benchmarks/shapes_quality.py --model DIR -o cfg_scale=4 -o top_k=50   # sampling sweeps
    python benchmarks/shapes_quality.py --model DIR --reconstruct 500   # the tokenizer

The classifier is the committed judge in assets/shapes-classifier (the one ``argen eval --domain shapes``
uses; ``--judge FOLDER`` for another one written by ``python -m argen.eval.shapes --out FOLDER``). It
classifies ``per-class`` generated images of every class. Writes JSON: classifier held-out accuracy,
generated-image accuracy overall and per class, the sampling options and seed. ``--reconstruct N``
judges the tokenizer instead: N held-out shapes encoded and decoded (MSE, and the judge's accuracy on
the reconstructions next to its accuracy on the originals) — the ceiling for any generator on it.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import argen
from argen.components import load_component
from argen.data import SHAPE_NAMES, ShapesDataset
from argen.eval.shapes import batch, load_judge
from argen.options import parse_key_values


def flat_patch_codes(images: torch.Tensor, codes: torch.Tensor) -> tuple[float, float]:
    """Tokenizer consistency: over the patches of one flat palette colour (every pixel of the
    token's patch within 0.02 of the patch mean), the number of distinct codes and their perplexity
    exp(entropy), averaged over the palette colours. 1 is ideal; a high perplexity is entropy the
    generator must model without any image content behind it (dead-code restarts raise it)."""
    b, h, w = codes.shape
    ph, pw = images.shape[-2] // h, images.shape[-1] // w
    patches = images.unfold(2, ph, ph).unfold(3, pw, pw)  # (B, 3, h, w, ph, pw)
    flat = patches.flatten(-2)
    uniform = flat.std(-1).amax(1) < 0.02  # (B, h, w)
    colour = (flat.mean(-1) * 10).round().long().permute(0, 2, 3, 1)[uniform]  # (n, 3)
    seen: dict[tuple, list] = {}
    for c, k in zip(map(tuple, colour.tolist()), codes[uniform].tolist()):
        seen.setdefault(c, []).append(k)
    common = [torch.tensor(v) for v in seen.values() if len(v) >= 0.01 * len(colour)]  # the palette colours
    if not common:
        return 0.0, 0.0
    distinct = [len(v.unique()) for v in common]
    perplexity = []
    for v in common:
        p = v.bincount().float()
        p = p[p > 0] / len(v)
        perplexity.append(float(torch.exp(-(p * p.log()).sum())))
    return sum(distinct) / len(common), sum(perplexity) / len(common)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="shapes-llamagen")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", "-o", action="append", default=[], help="sampling option key=value")
    p.add_argument("--judge", help="shapes classifier folder (default: the committed assets/shapes-classifier)")
    p.add_argument("--reconstruct", type=int, default=0, metavar="N", help="judge N tokenizer reconstructions instead")
    p.add_argument("--resolution", type=int, default=64, help="--reconstruct of a tokenizer folder: image size")
    p.add_argument("--out")
    args = p.parse_args()
    opts = parse_key_values(args.option)

    if args.reconstruct and not (Path(args.model) / "model_index.json").is_file():
        tokenizer, resolution = load_component(args.model), args.resolution  # a tokenizer folder
    else:
        pipe = argen.load(args.model)
        tokenizer, resolution = pipe.tokenizer, pipe.image_size
    judge = load_judge(args.judge)
    held_out = judge.info.get("held_out_accuracy")

    def net(images: torch.Tensor) -> torch.Tensor:
        """The judge's logits; images of another size are resized to its own first (bilinear, antialiased)."""
        if images.shape[-1] != judge.resolution:
            images = F.interpolate(images, size=(judge.resolution, judge.resolution), mode="bilinear",
                                   antialias=True, align_corners=False)
        return judge.net(images)

    resized = None if resolution == judge.resolution else f"{resolution}px images upsampled to {judge.resolution}px"
    if args.reconstruct:
        x, y = batch(ShapesDataset(resolution, "test"), 0, args.reconstruct)
        with torch.inference_mode():
            codes = tokenizer.encode(x)
            rec = tokenizer.decode(codes).clamp(-1, 1)
            acc = [(net(im).argmax(-1) == y).float().mean().item() for im in (x, rec)]
        grid = codes[-1] if isinstance(codes, (list, tuple)) else codes  # multi-scale: the finest scale
        if grid.dim() == 4 and not grid.is_floating_point():  # a cell's sub-tokens (binary AE): one code
            v = tokenizer.codebook_size
            grid = (grid * v ** torch.arange(grid.shape[-1] - 1, -1, -1)).sum(-1)
        # code statistics for discrete tokenizers; a continuous one (KL VAE) has latents, not codes
        # (a pixel tokenizer, one code per pixel, has no patches to compare)
        per_pixel = grid.shape[-1] == x.shape[-1]
        distinct, perplexity = (None, None) if grid.is_floating_point() or per_pixel else flat_patch_codes(x, grid)
        result = {"model": args.model, "images": args.reconstruct, "reconstruction_mse": F.mse_loss(rec, x).item(),
                  "judge_accuracy_originals": acc[0], "judge_accuracy_reconstructions": acc[1],
                  "codes_per_flat_colour": distinct, "code_perplexity_per_flat_colour": perplexity,
                  "judged_at": resized or f"{resolution}px"}
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2))
        return
    classes = [c for c in range(len(SHAPE_NAMES)) for _ in range(args.per_class)]
    t0 = time.time()
    images = pipe.generate(classes, seed=args.seed, output_type="pt", batch_size=50, **opts)
    t_gen = time.time() - t0
    with torch.no_grad():
        pred = net(images.float()).argmax(-1)
    truth = torch.tensor(classes)
    per_class = {SHAPE_NAMES[c]: (pred[truth == c] == c).float().mean().item() for c in range(len(SHAPE_NAMES))}
    result = {
        "model": args.model,
        "classifier_held_out_accuracy": held_out,
        "generated_accuracy": (pred == truth).float().mean().item(),
        "per_class_accuracy": per_class,
        "images": len(classes),
        "seed": args.seed,
        "sampling": {**pipe.defaults, **opts},
        "judge": os.path.relpath(judge.info["folder"]),  # not the absolute path of this checkout
        "generation_s": round(t_gen, 1),
        "judged_at": resized or f"{resolution}px",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
