"""Shared test fixtures: the official reference data (tests/reference, carried by the repository) and tiny
models."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

REPO = Path(__file__).resolve().parents[1]
# the repository's own copy; ARGEN_SHARED=/path/to/shared tests against another copy (e.g. a newer one)
REFERENCE = Path(os.environ["ARGEN_SHARED"]) / "reference" if os.environ.get("ARGEN_SHARED") else REPO / "tests" / "reference"
FIXTURES = REFERENCE / "fixtures"
LAYOUTS = REFERENCE / "layouts"

if not FIXTURES.is_dir():
    raise RuntimeError(f"official reference data not found at {REFERENCE} (tests/reference, or $ARGEN_SHARED/reference)")


def fixture_config(name: str, drop: tuple[str, ...] = ()) -> dict:
    cfg = json.loads((FIXTURES / f"{name}.json").read_text())["config"]
    return {k: v for k, v in cfg.items() if k not in drop}


def fixture_weights(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"{name}.weights.safetensors"))


def fixture_io(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"{name}.io.safetensors"))


# official constructor arguments of the tiny fixtures (the JSON adds derived, non-argument fields)
GPT_TINY_ARGS = fixture_config("llamagen_gpt_tiny", drop=("ffn_hidden",))
VQ_TINY_ARGS = fixture_config("llamagen_vq_tiny", drop=("image_size",))


@pytest.fixture(scope="session")
def gpt_tiny():
    from argen.convert.llamagen import load_gpt

    return load_gpt(fixture_weights("llamagen_gpt_tiny"), **GPT_TINY_ARGS)


@pytest.fixture(scope="session")
def vq_tiny():
    from argen.convert.llamagen import load_vq

    return load_vq(fixture_weights("llamagen_vq_tiny"), **VQ_TINY_ARGS)


@pytest.fixture(scope="session")
def gpt_io():
    return fixture_io("llamagen_gpt_tiny")


@pytest.fixture(scope="session")
def vq_io():
    return fixture_io("llamagen_vq_tiny")


@pytest.fixture(scope="session")
def official_ckpts(tmp_path_factory):
    """The tiny fixture weights written as official-format .pt files (DDP ``{"model": ...}``)."""
    d = tmp_path_factory.mktemp("official")
    torch.save({"model": fixture_weights("llamagen_gpt_tiny"), "steps": 1}, d / "gpt.pt")
    torch.save({"model": fixture_weights("llamagen_vq_tiny")}, d / "vq.pt")
    (d / "gpt.json").write_text(json.dumps(GPT_TINY_ARGS))
    (d / "vq.json").write_text(json.dumps(VQ_TINY_ARGS))
    return d


@pytest.fixture()
def tiny_pipe(gpt_tiny, vq_tiny):
    import copy

    from argen import ARPipeline

    return ARPipeline(copy.deepcopy(gpt_tiny), copy.deepcopy(vq_tiny), defaults={"cfg_scale": 4.0, "top_k": 8}, name="tiny")
