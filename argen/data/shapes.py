"""A synthetic class-conditional data set: 10 anti-aliased shapes with random colour, size, position,
rotation and background, at any resolution, deterministic by (seed, index), infinite, with a
held-out split drawn from a disjoint seed range.

Colours are drawn from a 6-colour palette by default (``colours="palette"``): a small VQ codebook
can represent them exactly, so what a small model must learn is the shape, not the colour shades.
``colours="continuous"`` draws any hue/lightness/saturation (a harder set for tokenizers).

    ds = ShapesDataset(resolution=64, split="train")
    image, label = ds[123]          # (3, 64, 64) in [-1, 1], int in 0..9
    SHAPE_NAMES[label]
"""
from __future__ import annotations

import colorsys
import math
import random

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from argen.errors import ConfigError

SHAPE_NAMES = ["circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "ring", "heart"]
SPLIT_OFFSET = {"train": 0, "test": 1 << 40}  # the held-out split uses a disjoint range of seeds
SUPERSAMPLE = 4  # draw at 4x and downsample with a box filter: anti-aliased edges


def _regular(n: int, r: float, rot: float) -> list[tuple[float, float]]:
    return [(r * math.cos(rot + 2 * math.pi * k / n), r * math.sin(rot + 2 * math.pi * k / n)) for k in range(n)]


def _outline(name: str, r: float, rot: float) -> list[tuple[float, float]]:
    """Polygon (relative to the centre) of a filled shape of radius ~r, rotated by rot."""
    if name == "square":
        return _regular(4, r, rot + math.pi / 4)
    if name == "triangle":
        return _regular(3, r, rot - math.pi / 2)
    if name == "diamond":  # a rhombus: 4 vertices, one axis 0.6x the other
        pts = [(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)]
    elif name == "pentagon":
        return _regular(5, r, rot - math.pi / 2)
    elif name == "hexagon":
        return _regular(6, r, rot)
    elif name == "star":
        return [
            ((r if k % 2 == 0 else 0.42 * r) * math.cos(rot - math.pi / 2 + math.pi * k / 5),
             (r if k % 2 == 0 else 0.42 * r) * math.sin(rot - math.pi / 2 + math.pi * k / 5))
            for k in range(10)
        ]
    elif name == "cross":
        a = 0.32 * r
        pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a),
               (-a, -a)]
    elif name == "heart":
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x * r / 17, (y + 2.5) * r / 17))
    else:
        raise ConfigError(f"unknown shape {name!r}")
    c, s = math.cos(rot), math.sin(rot)
    return [(x * c - y * s, x * s + y * c) for x, y in pts]


# Six well-separated colours: 28 (background, foreground) pairs pass MIN_CONTRAST. With the 12-colour
# palette tried first (94 pairs) a 1024-code tokenizer spent its codes on colour pairs and the GPT saw
# each pair too rarely to learn the shapes: every code is specific to its colour pair.
PALETTE = {
    "black": (20, 20, 24), "white": (240, 240, 236), "red": (214, 40, 40),
    "yellow": (240, 216, 40), "green": (40, 160, 64), "blue": (40, 84, 220),
}
COLOUR_MODES = ("palette", "continuous")
MIN_CONTRAST = 150.0  # Euclidean RGB distance between background and foreground palette colours


def _palette_colours(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A background and a foreground palette colour that differ clearly."""
    colours = list(PALETTE.values())
    bg = rng.choice(colours)
    fg = rng.choice([c for c in colours if math.dist(c, bg) >= MIN_CONTRAST])
    return bg, fg


def _continuous_colours(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A background and a foreground colour that differ clearly in lightness."""
    def rgb(h, light, s):
        return tuple(int(round(255 * v)) for v in colorsys.hls_to_rgb(h, light, s))

    bg_light = rng.uniform(0.05, 0.95)
    fg_light = (bg_light + rng.uniform(0.35, 0.65)) % 1.0
    if abs(fg_light - bg_light) < 0.3:
        fg_light = 1.0 - bg_light
    return rgb(rng.random(), bg_light, rng.uniform(0.0, 0.8)), rgb(rng.random(), fg_light, rng.uniform(0.3, 1.0))


def render_shape(label: int, resolution: int, rng: random.Random, colours: str = "palette") -> Image.Image:
    """One RGB image of shape class ``label`` with random appearance drawn from ``rng``."""
    if colours not in COLOUR_MODES:
        raise ConfigError(f"colours must be one of {', '.join(COLOUR_MODES)}, got {colours!r}")
    name = SHAPE_NAMES[label]
    size = resolution * SUPERSAMPLE
    bg, fg = (_palette_colours if colours == "palette" else _continuous_colours)(rng)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.40) * size
    cx = rng.uniform(r * 1.05, size - r * 1.05)
    cy = rng.uniform(r * 1.05, size - r * 1.05)
    rot = rng.uniform(0, 2 * math.pi)
    if name in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        if name == "ring":
            ri = r * rng.uniform(0.5, 0.65)
            draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=bg)
    else:
        draw.polygon([(cx + x, cy + y) for x, y in _outline(name, r, rot)], fill=fg)
    return img.resize((resolution, resolution), Image.Resampling.BOX)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float32 in [-1, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


class ShapesDataset(Dataset):
    """Deterministic shapes: item ``i`` of a split always renders the same image and label.

    ``length`` only sets what ``len()`` reports (an epoch); any non-negative index is valid.
    Labels cycle through the classes (balanced); appearance comes from the per-item seed.
    """

    num_classes = len(SHAPE_NAMES)
    class_names = SHAPE_NAMES

    def __init__(
        self, resolution: int = 64, split: str = "train", length: int = 100_000, seed: int = 0,
        colours: str = "palette",
    ) -> None:
        if colours not in COLOUR_MODES:
            raise ConfigError(f"colours must be one of {', '.join(COLOUR_MODES)}, got {colours!r}")
        if split not in SPLIT_OFFSET:
            raise ConfigError(f"split must be one of {', '.join(SPLIT_OFFSET)}, got {split!r}")
        if resolution < 8:
            raise ConfigError(f"resolution must be at least 8 pixels, got {resolution}")
        self.resolution, self.split, self.length, self.seed = resolution, split, length, seed
        self.colours = colours

    def __len__(self) -> int:
        return self.length

    def label(self, index: int) -> int:
        return index % self.num_classes

    def render(self, index: int) -> Image.Image:
        if index < 0:
            raise IndexError(index)
        rng = random.Random(f"argen-shapes/{self.seed}/{SPLIT_OFFSET[self.split] + index}")
        return render_shape(self.label(index), self.resolution, rng, self.colours)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return image_to_tensor(self.render(int(index))), self.label(int(index))
