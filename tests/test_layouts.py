"""Every released LlamaGen checkpoint layout loads strictly into the argen module built from its
config (on the meta device: no weights needed)."""
import json

import pytest
import torch
from conftest import LAYOUTS, reference_layouts

from argen.convert.checkpoint import load_into
from argen.convert.llamagen import gpt_config, vq_config
from argen.generators import LlamaGen
from argen.tokenizers import VQTokenizer

GPT = {
    "llamagen_gpt_b_c2i": dict(preset="GPT-B"),
    "llamagen_gpt_l_c2i": dict(preset="GPT-L"),
    "llamagen_gpt_xl_c2i": dict(preset="GPT-XL", block_size=576),
    "llamagen_gpt_xxl_c2i": dict(preset="GPT-XXL", block_size=576),
    "llamagen_gpt_3b_c2i": dict(preset="GPT-3B", block_size=576),
    "llamagen_gpt_xl_t2i": dict(preset="GPT-XL", cls_token_num=120, model_type="t2i"),
}
VQ = {"llamagen_vq_16": "VQ-16", "llamagen_vq_8": "VQ-8"}


def test_every_llamagen_layout_is_covered():
    names = reference_layouts("llamagen_*.json")
    assert names == set(GPT) | set(VQ)


def _meta_state(layout: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in layout["tensors"].items()}


@pytest.mark.parametrize("name", sorted(GPT))
def test_gpt_layout_loads_strictly(name):
    layout = json.loads((LAYOUTS / f"{name}.json").read_text())
    args = dict(GPT[name])
    model = LlamaGen.from_config(gpt_config(args.pop("preset"), **args), device="meta")
    load_into(model, _meta_state(layout), source=name)
    assert sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n in layout["tensors"]
    ) == layout["num_params"] + sum(
        torch.Size(layout["tensors"][b]).numel() for b in layout.get("buffers_in_state_dict", [])
    )


@pytest.mark.parametrize("name", sorted(VQ))
def test_vq_layout_loads_strictly(name):
    layout = json.loads((LAYOUTS / f"{name}.json").read_text())
    model = VQTokenizer.from_config(vq_config(VQ[name]), device="meta")
    load_into(model, _meta_state(layout), source=name)
    assert sum(p.numel() for p in model.parameters()) == layout["num_params"]
