"""Tensors <-> PIL images and sample grids."""
from __future__ import annotations

import math

import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounding as torchvision's save_image does."""
    x = (images.detach().float().clamp(-1, 1) + 1) / 2
    return x.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(a.numpy()) for a in to_uint8(images)]


def make_grid(images: list[Image.Image], ncols: int | None = None, pad: int = 2) -> Image.Image:
    """Paste images into one grid (row-major), ``ncols`` per row (default: about square)."""
    if not images:
        raise ValueError("no images to put in a grid")
    n = len(images)
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    w, h = images[0].size
    grid = Image.new("RGB", (ncols * w + (ncols + 1) * pad, nrows * h + (nrows + 1) * pad), "white")
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        grid.paste(im, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
