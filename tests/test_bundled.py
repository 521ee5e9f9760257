"""The bundled default model: loads offline, generates, and `argen generate` needs no arguments."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

import argen
from argen.data import SHAPE_NAMES
from argen.zoo import BUNDLED, DEFAULT_MODEL


@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_model_is_small_and_documented(name):
    folder = BUNDLED[name].path
    for f in ["model_index.json", "README.md", "samples.png", "generator/model.safetensors",
              "tokenizer/model.safetensors"]:
        assert (folder / f).is_file(), f
    # "under about 20 MB" per bundled checkpoint
    assert all((folder / c / "model.safetensors").stat().st_size < 21e6 for c in ("generator", "tokenizer"))
    assert "Quality" in (folder / "README.md").read_text()


@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_model_loads_offline_and_generates(name):
    pipe = argen.load(name)
    size = BUNDLED[name].image_size
    assert pipe.class_names == SHAPE_NAMES and pipe.image_size == size
    images = pipe.generate(["star", "ring"], seed=0)
    assert [im.size for im in images] == [(size, size), (size, size)]
    again = pipe.generate(["star", "ring"], seed=0)
    assert [im.tobytes() for im in images] == [im.tobytes() for im in again]


def test_argen_generate_without_arguments_writes_a_grid(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "argen", "generate", "-q"], cwd=tmp_path, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["images"] == 10 and report["classes"] == list(range(10))
    grid = Image.open(tmp_path / "argen_samples.png")
    assert grid.size == (4 * 64 + 5 * 2, 3 * 64 + 4 * 2)


# transformer passes: one per token (LlamaGen; MAR at its default num_iter 64), per scale
# (VAR: 1, 2, 3, 4, 5, 6, 8; FlowAR: 1, 2, 4, 8); one for a distilled student (dd, its default: 1 step); one per
# pixel (image-GPT, 32 x 32); one per position of 2 sub-tokens (ELM, 8 x 8)
PASSES = {"llamagen": 64, "var": 7, "flowar": 4, "mar": 64, "dd-llamagen": 1, "dd-var": 1, "igpt": 1024,
          "elm": 64}


@pytest.mark.parametrize("name", list(BUNDLED))
def test_argen_generate_with_each_bundled_model(tmp_path, name):
    r = subprocess.run([sys.executable, "-m", "argen", "generate", "-q", "--model", name, "--classes", "star", "ring",
                        "--out", str(tmp_path / "grid.png")], capture_output=True, text=True,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["classes"] == [6, 8] and report["forward_passes"] == PASSES[BUNDLED[name].family]
    size = BUNDLED[name].image_size
    assert Image.open(tmp_path / "grid.png").size == (2 * size + 3 * 2, size + 2 * 2)


def test_models_lists_the_bundled_model_first():
    assert argen.list_models()[0].name == DEFAULT_MODEL
    out = subprocess.run([sys.executable, "-m", "argen", "models"], capture_output=True, text=True).stdout
    assert out.splitlines()[1].startswith(DEFAULT_MODEL)
