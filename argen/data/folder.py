"""Any folder of images as a training set: one sub-folder per class (names kept), any size and
format PIL reads, resized and center- or random-cropped to the training resolution, optionally
mirrored (both off by default: a mirrored or shifted letter, digit or logo is another image).

A folder with images but no class sub-folders is used unconditionally (one class, with a warning).
Unreadable files are skipped and counted; above ``max_bad_fraction`` loading fails.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from argen.data.shapes import image_to_tensor
from argen.errors import ConfigError

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def resize_crop(img: Image.Image, resolution: int, rng: random.Random | None = None) -> Image.Image:
    """Resize the shorter side to ``resolution`` (bicubic, anti-aliased), then crop a square: the
    centre, or a random one when ``rng`` is given."""
    img = img.convert("RGB")
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
    if rng is None:
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
    else:
        left, top = rng.randint(0, nw - resolution), rng.randint(0, nh - resolution)
    return img.crop((left, top, left + resolution, top + resolution))


class ImageFolderDataset(Dataset):
    """(image (3, R, R) in [-1, 1], class index) pairs from ``root/<class>/*.png|jpg|...``.

    ``ds[i]`` draws the augmentation (``random_crop``, ``hflip``) from torch's global RNG;
    ``ds[(i, seed)]`` from ``seed`` (what the trainers pass: a seed per position of the run's data
    stream, so a resumed run sees the same images); :meth:`load` with no ``rng``: centre crop, no flip."""

    seeded_items = True  # the trainers' step sampler passes (index, seed) pairs

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        *,
        random_crop: bool = False,
        hflip: bool = False,
        max_bad_fraction: float = 0.1,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"data folder not found: {root}")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and _images_in(d))
        self.conditional = bool(classes)
        if classes:
            files = [(p, i) for i, c in enumerate(classes) for p in _images_in(root / c)]
        else:
            files = [(p, 0) for p in _images_in(root)]
            if files:
                logger.warning("%s has no class sub-folders: training unconditionally (one class)", root)
                classes = [root.name]
        if not files:
            raise ConfigError(f"no images found in {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
        good = [(p, c) for p, c in files if _readable(p)]
        self.num_bad = len(files) - len(good)
        if self.num_bad:
            logger.warning("skipping %d unreadable image(s) of %d in %s", self.num_bad, len(files), root)
        if not good or self.num_bad > max_bad_fraction * len(files):
            raise ConfigError(
                f"{self.num_bad} of {len(files)} images in {root} are unreadable "
                f"(more than {max_bad_fraction:.0%}): is this the right folder?"
            )
        self.root, self.resolution, self.samples = root, resolution, good
        self.class_names = classes
        self.num_classes = len(classes)
        self.random_crop, self.hflip = random_crop, hflip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(index, tuple):
            index, seed = index
        elif self.random_crop or self.hflip:
            seed = int(torch.randint(0, 2**62, ()))
        else:
            seed = None
        return self.load(int(index), None if seed is None else random.Random(seed))

    def load(self, index: int, rng: random.Random | None = None) -> tuple[torch.Tensor, int]:
        """Item ``index`` with this data set's augmentation drawn from ``rng`` (None: centre crop, no flip)."""
        path, label = self.samples[index]
        # the crop offset and the flip are drawn in this order whether or not the other one is on, so
        # turning one on does not change the other's draws
        crop_rng = random.Random(rng.getrandbits(64)) if rng is not None else None
        flip = rng is not None and rng.random() < 0.5
        try:
            with Image.open(path) as im:
                img = resize_crop(im, self.resolution, crop_rng if self.random_crop else None)
        except OSError as exc:
            raise ConfigError(f"cannot read image {path}: {exc}") from None
        if self.hflip and flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image_to_tensor(img), label
