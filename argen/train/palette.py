"""Fitting a colour palette (``argen train tokenizer --kind palette``): k-means of RGB pixels sampled
from an image folder or the shapes set, as image-GPT fitted its 512 clusters on ImageNet. A sample of
pixels is enough (colours, not images, are clustered), and the fit is seeded. Result: an argen
tokenizer folder (config.json + model.safetensors) and train.json."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from argen.errors import ConfigError
from argen.images import make_grid, to_pil
from argen.tokenizers.palette import PaletteTokenizer, kmeans
from argen.train.data import make_dataset


def fit_palette(out: str | Path, data: str, resolution: int, codebook_size: int, *, images: int = 512,
                pixels_per_image: int = 256, iters: int = 50, seed: int = 0, progress: bool = True) -> Path:
    """Fit a ``codebook_size``-colour palette on ``pixels_per_image`` random pixels of each of ``images``
    images of ``data`` at ``resolution``; write the tokenizer folder ``out`` and return it."""
    if codebook_size < 2:
        raise ConfigError(f"a palette needs at least 2 colours, got --codebook-size {codebook_size}")
    if images < 1 or pixels_per_image < 1:
        raise ConfigError(f"--palette-images and --palette-pixels must be >= 1, got {images} and {pixels_per_image}")
    out = Path(out)
    t0 = time.time()
    dataset, infinite, class_names = make_dataset(data, resolution, seed=seed)
    n = images if infinite else min(images, len(dataset))
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(dataset), generator=g)[:n].tolist() if not infinite else list(range(n))
    samples = []
    for i in tqdm(picks, desc="palette pixels", disable=not progress):
        image = dataset[i][0]
        flat = image.permute(1, 2, 0).reshape(-1, 3)
        samples.append(flat[torch.randint(0, flat.shape[0], (min(pixels_per_image, flat.shape[0]),), generator=g)])
    pixels = torch.cat(samples)
    tok = PaletteTokenizer.from_colours(kmeans(pixels, codebook_size, iters=iters, seed=seed), source="k-means")
    tok.save_pretrained(out)
    held_out = torch.stack([dataset[i][0] for i in picks[:8]])
    recon = tok.decode(tok.encode(held_out))
    mse = float((recon - held_out).pow(2).mean())
    (out / "samples").mkdir(parents=True, exist_ok=True)
    make_grid(to_pil(torch.cat([held_out, recon])), ncols=held_out.shape[0]).save(out / "samples" / "palette.png")
    (out / "train.json").write_text(json.dumps({
        "kind": "tokenizer", "tokenizer_kind": "palette", "data": data, "resolution": resolution,
        "codebook_size": codebook_size, "images": n, "pixels": pixels.shape[0], "iters": iters, "seed": seed,
        "reconstruction_mse": mse, "class_names": class_names, "train_time_s": round(time.time() - t0, 2),
    }, indent=2))
    return out
