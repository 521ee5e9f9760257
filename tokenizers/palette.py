"""A colour palette as a tokenizer: each pixel is the index of its nearest palette colour (image-GPT's
9-bit palette of 512 k-means clusters, or one fitted on any image folder by :func:`fit_palette`).

The colour space and scaling are image-GPT's (``ImageGPTImageProcessor``): RGB in [-1, 1], and the
nearest colour is the argmin of ``|x|^2 - 2 x.c + |c|^2`` in float32, the processor's own expansion,
so the ids are the processor's ones, near-ties included. A pixel tokenizer has no latent grid of its
own: an image of H x W pixels is H x W codes in raster order (``downsample`` 1).

    tok = PaletteTokenizer.from_colours(clusters)   # (K, 3) in [-1, 1]
    ids = tok.encode(images)                        # (B, 3, H, W) in [-1, 1] -> (B, H, W) int64
    images = tok.decode(ids)                        # -> the palette colours, (B, 3, H, W)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from argen.errors import CheckpointError, ConfigError
from argen.modeling import Pretrained, register


@dataclass
class PaletteConfig:
    codebook_size: int = 512

    def __post_init__(self) -> None:
        if self.codebook_size < 2:
            raise ConfigError(f"a palette needs at least 2 colours, got codebook_size={self.codebook_size}")


def check_palette(colours: torch.Tensor | np.ndarray | list, source: str = "palette") -> torch.Tensor:
    """``colours`` as a float32 (K, 3) tensor of RGB in [-1, 1]; a ConfigError naming what is wrong."""
    t = colours if isinstance(colours, torch.Tensor) else torch.as_tensor(np.asarray(colours, dtype=np.float64))
    if t.dim() != 2 or t.shape[1] != 3 or t.shape[0] < 2:
        raise ConfigError(f"{source}: a palette is (K, 3) RGB colours with K >= 2, got shape {tuple(t.shape)}")
    t = t.float()
    if not torch.isfinite(t).all() or t.abs().max() > 1.0 + 1e-6:
        raise ConfigError(f"{source}: palette colours must be finite RGB in [-1, 1] (image-GPT's scaling), "
                          f"got values in [{t.min().item():.3g}, {t.max().item():.3g}]")
    return t


def read_palette(path: str | Path) -> torch.Tensor:
    """A palette file: an image-GPT processor config (``preprocessor_config.json``, its ``clusters``), a
    JSON list of [r, g, b] rows, or a ``.npy`` array (openai/image-gpt's ``kmeans_centers.npy``); (K, 3)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"palette file {path} not found")
    try:
        data = np.load(path, allow_pickle=False) if path.suffix == ".npy" else json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable palette (.json or .npy): {exc}") from None
    if isinstance(data, dict):
        if "clusters" not in data:
            raise ConfigError(f"{path}: no 'clusters' in this JSON object (keys: {', '.join(data)})")
        data = data["clusters"]
    try:
        return check_palette(data, str(path))
    except ValueError as exc:  # ragged rows, strings: not an array of numbers
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: a palette is (K, 3) RGB colours, got no array of numbers ({exc})") from None


@register("palette")
class PaletteTokenizer(Pretrained):
    """Pixels <-> palette ids. Kind ``pixels``: the discrete protocol, one code per pixel."""

    config_class = PaletteConfig
    kind = "pixels"

    def __init__(self, config: PaletteConfig) -> None:
        super().__init__()
        self.config = config
        # a parameter (not a buffer) so that it follows .to(device, dtype) and is in the state dict
        self.clusters = nn.Parameter(torch.zeros(config.codebook_size, 3), requires_grad=False)

    @classmethod
    def from_colours(cls, colours: torch.Tensor | np.ndarray | list, source: str = "palette") -> "PaletteTokenizer":
        c = check_palette(colours, source)
        tok = cls(PaletteConfig(codebook_size=c.shape[0]))
        tok.clusters.data.copy_(c)
        return tok.eval()

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def downsample(self) -> int:
        return 1

    @property
    def code_vectors(self) -> torch.Tensor:
        return self.clusters

    def latent_grid(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        return (int(h), int(w))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, H, W) int64 ids of the nearest colours."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"palette encode takes RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        b, _, h, w = images.shape
        x = images.permute(0, 2, 3, 1).reshape(-1, 3).float()
        c = self.clusters.float().to(x.device)
        ids = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        step = 1 << 16  # pixels per chunk: the (N, K) distance table stays small
        for s in range(0, x.shape[0], step):
            xs = x[s : s + step]
            d = (xs * xs).sum(1, keepdim=True) - 2 * (xs @ c.t()) + (c * c).sum(1)[None]
            ids[s : s + step] = d.argmin(1)
        return ids.view(b, h, w)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, H, W) ids -> (B, 3, H, W) palette colours; ids out of range are an error."""
        codes = codes.long()
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ConfigError(f"palette ids must lie in 0..{self.codebook_size - 1}, got "
                              f"{int(codes.min())}..{int(codes.max())}")
        return self.clusters[codes].permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def kmeans(pixels: torch.Tensor, k: int, *, iters: int = 50, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means of ``pixels`` (N, 3) with k-means++ seeding from ``seed``; (k, 3) centres,
    sorted by luminance so that a fitted palette reads dark to light. Centres of empty clusters are
    re-seeded with the pixels farthest from their centres."""
    if pixels.shape[0] < k:
        raise ConfigError(f"k-means of {k} colours needs at least {k} pixels, got {pixels.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    x = pixels.double()
    centres = x[torch.randint(0, x.shape[0], (1,), generator=g)]
    for _ in range(1, k):  # k-means++: each new centre drawn in proportion to the squared distance
        d = torch.cdist(x, centres).min(1).values.pow(2)
        if d.sum() <= 0:  # fewer distinct colours than k: repeat one (re-seeded below if ever empty)
            centres = torch.cat([centres, centres[:1]])
            continue
        centres = torch.cat([centres, x[torch.multinomial(d / d.sum(), 1, generator=g)]])
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        counts = torch.bincount(assign, minlength=k)
        new = torch.zeros_like(centres).index_add_(0, assign, x) / counts.clamp(min=1)[:, None]
        empty = counts == 0
        if empty.any():
            far = torch.cdist(x, centres).min(1).values.argsort(descending=True)[: int(empty.sum())]
            new[empty] = x[far]
        if torch.allclose(new, centres, atol=1e-7):
            centres = new
            break
        centres = new
    luminance = centres @ torch.tensor([0.299, 0.587, 0.114], dtype=centres.dtype)
    return centres[luminance.argsort()].float().clamp(-1, 1)
