"""The training set named on the command line: ``shapes`` or an image folder."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from argen.data import ImageFolderDataset, ShapesDataset
from argen.errors import ConfigError


def make_dataset(
    spec: str, resolution: int, *, split: str = "train", hflip: bool = False, random_crop: bool = False, seed: int = 0
) -> tuple[Dataset, bool, list[str]]:
    """Returns (dataset, infinite, class_names). ``seed`` picks the shapes stream (a run continued
    with ``--init-from`` and another ``--seed`` sees new images, not the first run's again).
    ``hflip`` / ``random_crop`` augment an image folder; both are the user's choice (a mirrored
    letter or logo is another image), and the shapes set, which draws random positions and rotations
    itself, takes neither."""
    if spec == "shapes":
        if hflip or random_crop:
            raise ConfigError("--hflip / --random-crop augment an image folder; the shapes set draws random "
                              "positions, sizes and rotations itself (leave them off with --data shapes)")
        ds = ShapesDataset(resolution=resolution, split=split, seed=seed)
        return ds, True, list(ds.class_names)
    if not Path(spec).exists():
        raise ConfigError(f"--data must be 'shapes' or an existing image folder, got {spec!r}")
    ds = ImageFolderDataset(spec, resolution, random_crop=random_crop, hflip=hflip)
    return ds, False, list(ds.class_names)


def check_stride(resolution: int, downsample: int) -> None:
    if resolution % downsample:
        raise ConfigError(
            f"resolution {resolution} is not divisible by the tokenizer's downsampling factor {downsample}"
        )
