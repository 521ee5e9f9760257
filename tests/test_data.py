"""Training data: the shapes set and image folders."""
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

from argen.data import SHAPE_NAMES, ImageFolderDataset, ShapesDataset, render_shape
from argen.data.shapes import PALETTE
from argen.errors import ConfigError


def test_shapes_is_deterministic_and_splits_differ():
    a, b = ShapesDataset(32), ShapesDataset(32)
    x1, y1 = a[17]
    x2, y2 = b[17]
    assert torch.equal(x1, x2) and y1 == y2 == 7
    xt, yt = ShapesDataset(32, split="test")[17]
    assert yt == 7 and not torch.equal(x1, xt)
    assert x1.shape == (3, 32, 32) and x1.min() >= -1 and x1.max() <= 1
    assert [a.label(i) for i in range(12)] == list(range(10)) + [0, 1]
    assert not torch.equal(a[10_000_000][0], a[10_000_010][0])  # any index: infinite


def test_shape_classes_differ_for_the_same_appearance():
    masks = []
    for label in range(len(SHAPE_NAMES)):
        img = np.asarray(render_shape(label, 48, random.Random(5)), dtype=np.float32)
        bg = img[0, 0]
        masks.append(np.abs(img - bg).sum(-1) > 30)
    for i in range(len(masks)):
        for j in range(i):
            assert (masks[i] != masks[j]).mean() > 0.01, (SHAPE_NAMES[i], SHAPE_NAMES[j])


def test_shapes_colour_modes():
    palette = set(PALETTE.values())
    for i in range(20):
        img = np.asarray(ShapesDataset(32).render(i))
        assert tuple(img[0, 0]) in palette  # background corner: an exact palette colour
    cont = [tuple(np.asarray(ShapesDataset(32, colours="continuous").render(i))[0, 0]) for i in range(20)]
    assert sum(c not in palette for c in cont) >= 18
    with pytest.raises(ConfigError, match="colours must be one of palette, continuous"):
        ShapesDataset(32, colours="rainbow")


@pytest.mark.parametrize("res", [17, 64, 100])
def test_shapes_any_resolution_and_anti_aliased(res):
    img = ShapesDataset(res).render(3)
    assert img.size == (res, res)
    colours = {tuple(c) for c in np.asarray(img).reshape(-1, 3)}
    assert len(colours) > 2  # edge pixels blend foreground and background


def _write(path, size, colour, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, fmt)


def test_image_folder_with_classes(tmp_path):
    _write(tmp_path / "cats" / "a.png", (40, 30), (255, 0, 0))
    _write(tmp_path / "cats" / "b.jpg", (20, 50), (250, 0, 0), "JPEG")
    _write(tmp_path / "dogs" / "sub" / "c.png", (64, 64), (0, 0, 255))
    (tmp_path / "notes.txt").write_text("ignored")
    ds = ImageFolderDataset(tmp_path, 16)
    assert ds.class_names == ["cats", "dogs"] and ds.conditional and len(ds) == 3
    x, y = ds[2]
    assert x.shape == (3, 16, 16) and y == 1 and x[2].mean() > 0.9 and x[0].mean() < -0.9
    ds_crop = ImageFolderDataset(tmp_path, 16, random_crop=True, hflip=True)
    assert ds_crop[0][0].shape == (3, 16, 16)


def test_image_folder_augmentation_is_off_by_default_and_drawn_from_the_item_seed(tmp_path):
    """ds[(i, seed)] is a function of (i, seed) (the trainers' resumable stream); without augmentation
    every seed gives the centre crop unmirrored; the flip of a seed is the same with or without random crops."""
    px = np.zeros((16, 24, 3), np.uint8)
    px[:, 12:] = 255  # bright right half
    px[0, 0] = (255, 0, 0)
    path = tmp_path / "a" / "x.png"
    path.parent.mkdir()
    Image.fromarray(px).save(path)
    plain = ImageFolderDataset(tmp_path, 16)
    assert not plain.hflip and not plain.random_crop
    assert all(torch.equal(plain[(0, seed)][0], plain.load(0)[0]) for seed in range(20))
    flip = ImageFolderDataset(tmp_path, 16, hflip=True)
    both = ImageFolderDataset(tmp_path, 16, hflip=True, random_crop=True)
    mirrored = [bool(flip[(0, seed)][0][:, :, :8].mean() > 0) for seed in range(40)]
    assert 5 < sum(mirrored) < 35
    assert mirrored == [bool(both[(0, seed)][0][:, :, :4].mean() > both[(0, seed)][0][:, :, -4:].mean())
                        for seed in range(40)]
    assert torch.equal(both[(0, 7)][0], both[(0, 7)][0])
    assert len({both[(0, seed)][0].sum().item() for seed in range(40)}) > 3  # the crops move


def test_image_folder_without_classes_is_unconditional(tmp_path, caplog):
    _write(tmp_path / "x.png", (8, 8), (1, 2, 3))
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(tmp_path, 8)
    assert "unconditionally" in caplog.text and ds.num_classes == 1 and not ds.conditional


def test_image_folder_bad_input(tmp_path, caplog):
    with pytest.raises(ConfigError, match="no images found"):
        ImageFolderDataset(tmp_path, 16)
    with pytest.raises(ConfigError, match="not found"):
        ImageFolderDataset(tmp_path / "missing", 16)
    for i in range(9):
        _write(tmp_path / "a" / f"{i}.png", (8, 8), (i, i, i))
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG not an image")
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(tmp_path, 8)
    assert ds.num_bad == 1 and len(ds) == 9 and "skipping 1 unreadable" in caplog.text
    for i in range(3):
        (tmp_path / "a" / f"broken{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="4 of 13 images.*unreadable"):
        ImageFolderDataset(tmp_path, 8)
