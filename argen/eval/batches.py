"""Sample batches: ADM ``.npz`` files (``arr_0`` uint8 NHWC in [0, 255], optional ``arr_1`` labels),
folders of PNGs, and arrays in memory, read in batches and checked on the way in.

A 50k x 256 x 256 batch is 9.8 GB, so ``.npz`` images are streamed out of the zip member like the
ADM evaluator does, never loaded whole. Images are quantised once, before they get here: a float
array is an error, not something to guess a scale for.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from argen.errors import ConfigError

LOSSY = (".jpg", ".jpeg", ".webp")


def _check_layout(shape: tuple[int, ...], dtype: np.dtype, where: str, first: np.ndarray | None = None) -> None:
    """uint8 (N, H, W, 3) or a ConfigError that says what is wrong and how to fix it."""
    if len(shape) != 4 or shape[-1] != 3:
        nchw = len(shape) == 4 and shape[1] == 3
        hint = " (it looks like NCHW: ADM batches are NHWC, move the channels last)" if nchw else ""
        raise ConfigError(f"{where} must be images of shape (N, H, W, 3), got {tuple(shape)}{hint}")
    if dtype != np.uint8:
        seen = f" with values in [{first.min():.3g}, {first.max():.3g}]" if first is not None and first.size else ""
        raise ConfigError(f"{where} must be uint8 in [0, 255], got {dtype}{seen}; quantise once before saving "
                          "(argen.images.to_uint8 for [-1, 1] tensors)")
    if shape[0] == 0:
        raise ConfigError(f"{where} holds no images")


def check_images(images: np.ndarray, where: str = "images") -> np.ndarray:
    """Validate an in-memory batch (uint8 NHWC) and return it as a numpy array."""
    arr = np.asarray(images)
    _check_layout(arr.shape, arr.dtype, where, arr[:64] if arr.ndim else arr)
    return arr


class ArrayImages:
    """Images already in memory."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, name: str = "array") -> None:
        self.images, self.name = check_images(images, name), name
        self._labels = None if labels is None else np.asarray(labels)

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int = 64) -> Iterator[np.ndarray]:
        for i in range(0, len(self), batch_size):
            yield self.images[i : i + batch_size]

    def labels(self) -> np.ndarray | None:
        return self._labels

    def describe(self) -> dict:
        return {"source": self.name, "format": "array", "images": len(self), "image_size": list(self.images.shape[1:3])}


class NpzImages:
    """``arr_0`` of an ``.npz``, read batch by batch from the zip member (works for savez_compressed too)."""

    def __init__(self, path: str | os.PathLike, key: str = "arr_0") -> None:
        self.path, self.key = Path(path), key
        try:
            with zipfile.ZipFile(self.path) as zf:
                if f"{key}.npy" not in zf.namelist():
                    keys = ", ".join(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
                    raise ConfigError(f"{self.path} has no {key!r} array (it holds: {keys or 'nothing'}); sample "
                                      f"batches keep their images in {key!r} as uint8 NHWC (ADM format)")
                with zf.open(f"{key}.npy") as f:
                    self.shape, fortran, self.dtype = self._header(f)
                    self._offset = f.tell()
                    first = (None if self.dtype == object
                             else np.frombuffer(f.read(64 * self.dtype.itemsize), self.dtype))
        except (zipfile.BadZipFile, OSError) as exc:
            raise ConfigError(f"cannot read {self.path} as an .npz file: {exc}") from None
        if fortran:
            raise ConfigError(f"{self.path}: {key} is stored in Fortran order; "
                              "save it with np.savez from a C-ordered array")
        _check_layout(self.shape, self.dtype, f"{self.path.name}:{key}", first)

    @staticmethod
    def _header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            shape, fortran, dtype = np.lib.format._read_array_header(f, version)
        return tuple(shape), fortran, np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int = 64) -> Iterator[np.ndarray]:
        per_image = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.key}.npy") as f:
            f.read(self._offset)
            for start in range(0, len(self), batch_size):
                n = min(batch_size, len(self) - start)
                buf = f.read(n * per_image)
                if len(buf) != n * per_image:
                    end = start + len(buf) // per_image
                    raise ConfigError(f"{self.path} is truncated: {self.key} ends before image {end}")
                yield np.frombuffer(bytearray(buf), dtype=np.uint8).reshape(n, *self.shape[1:])  # writable

    def labels(self) -> np.ndarray | None:
        with np.load(self.path) as data:
            return data["arr_1"] if "arr_1" in data.files else None

    def describe(self) -> dict:
        return {"source": str(self.path), "format": "npz", "images": len(self), "image_size": list(self.shape[1:3])}


class PngFolder:
    """The PNGs of a folder, in sorted file-name order, as RGB. JPEG and other lossy files are refused:
    the compression artefacts are part of what FID would measure."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder)
        if not self.path.is_dir():
            raise ConfigError(f"{self.path} is not a folder")
        self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() == ".png")
        if not self.files:
            lossy = [p.name for p in self.path.iterdir() if p.suffix.lower() in LOSSY]
            why = f" ({len(lossy)} lossy files such as {lossy[0]} are not used: save samples as PNG)" if lossy else ""
            raise ConfigError(f"no .png images in {self.path}{why}")
        with Image.open(self.files[0]) as im:
            self.size = im.size

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int = 64) -> Iterator[np.ndarray]:
        for i in range(0, len(self), batch_size):
            out = []
            for p in self.files[i : i + batch_size]:
                with Image.open(p) as im:
                    if im.size != self.size:
                        raise ConfigError(f"{p} is {im.size[0]}x{im.size[1]}, the folder's first image "
                                          f"{self.size[0]}x{self.size[1]}: all samples must have one size")
                    out.append(np.asarray(im.convert("RGB")))
            yield np.stack(out)

    def labels(self) -> None:
        return None

    def describe(self) -> dict:
        return {"source": str(self.path), "format": "png folder", "images": len(self),
                "image_size": [self.size[1], self.size[0]]}


ImageSource = ArrayImages | NpzImages | PngFolder


def open_images(source: str | os.PathLike | np.ndarray | ImageSource) -> ImageSource:
    """An ``.npz`` path, a PNG folder, an array (uint8 NHWC) or an already opened source."""
    if isinstance(source, (ArrayImages, NpzImages, PngFolder)):
        return source
    if isinstance(source, np.ndarray):
        return ArrayImages(source)
    path = Path(source)
    if path.is_dir():
        return PngFolder(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist (expected an .npz sample batch or a folder of PNGs)")
    if path.suffix.lower() in LOSSY:
        raise ConfigError(f"{path} is a lossy image; evaluate an .npz batch or a folder of PNGs")
    return NpzImages(path)


def read_all(source: str | os.PathLike | np.ndarray | ImageSource, batch_size: int = 256) -> np.ndarray:
    """Every image of a source as one uint8 (N, H, W, 3) array."""
    return np.concatenate(list(open_images(source).batches(batch_size)))


def save_npz(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """An ADM sample batch: ``arr_0`` uint8 NHWC (and ``arr_1`` labels when given), uncompressed."""
    images = check_images(images, str(path))
    arrays = {"arr_0": images}
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(images):
            raise ConfigError(f"{len(images)} images but {len(labels)} labels")
        arrays["arr_1"] = labels
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def save_pngs(folder: str | os.PathLike, images: np.ndarray, start: int = 0) -> list[Path]:
    """Images as ``{index:06d}.png`` (index from ``start``), the order a folder is read back in."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(check_images(images, str(folder))):
        paths.append(folder / f"{start + i:06d}.png")
        Image.fromarray(im).save(paths[-1])
    return paths


def folder_to_npz(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Pack a PNG folder into an ADM ``.npz`` (as VAR's create_npz_from_sample_folder)."""
    return save_npz(path, read_all(PngFolder(folder)))


def pack_npz(path: str | os.PathLike, batches: Iterator[np.ndarray], count: int, image_shape: tuple[int, int, int],
             labels: np.ndarray | None = None) -> Path:
    """Write an ADM ``.npz`` from batches without holding all images (50k x 256^2 is 9.8 GB): the
    ``arr_0`` member is streamed into the zip; the result reads back with ``np.load``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (count, *image_shape)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    written = 0
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for b in batches:
                b = check_images(b, str(path))
                if b.shape[1:] != tuple(image_shape):
                    raise ConfigError(f"a batch of shape {b.shape[1:]} does not match {tuple(image_shape)}")
                f.write(np.ascontiguousarray(b).tobytes())
                written += len(b)
        if labels is not None:
            with zf.open("arr_1.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(labels), allow_pickle=False)
    if written != count:
        tmp.unlink()
        raise ConfigError(f"expected {count} images for {path}, got {written}")
    os.replace(tmp, path)
    return path
