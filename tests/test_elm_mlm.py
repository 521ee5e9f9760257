"""ELM's masked LM: the released layouts load strictly, the forward's structure (bidirectional, masked inputs
ignored, class positions and mask column dropped), the training loss, save/load and the official loader.
No official MLM fixture exists; only the layouts pin the official code down."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import LAYOUTS, reference_file

from argen.convert.elm_mlm import load_elm_mlm
from argen.errors import CheckpointError, ConfigError
from argen.generators.elm_mlm import ElmMLM, ElmMLMConfig
from argen.generators.protocol import MaskedGenerator, missing_members

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(dim=32, n_layer=2, n_head=4, token_each=2, code_dim=4, block_size=16, num_classes=5)


@pytest.fixture(scope="module")
def tiny() -> ElmMLM:
    torch.manual_seed(0)
    model = ElmMLM(ElmMLMConfig(**TINY)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _inputs(b: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 16, (b, 16, 2), generator=g)
    masked = torch.rand(b, 16, generator=g) < 0.5
    return tokens, masked, torch.arange(b) % 6  # 5 = the null class


@pytest.mark.parametrize("preset,size,params", [("L", "l", 444_955_649), ("XL", "xl", 902_566_657),
                                                ("XXL", "xxl", 1_564_793_345)])
def test_released_layouts_load_strictly_on_meta(preset, size, params):
    layout = json.loads(reference_file(LAYOUTS / f"elm_mlm_{size}_1_16.json").read_text())
    assert layout["num_params"] == params
    state = {k: torch.empty(shape, device="meta") for k, shape in layout["tensors"].items()}
    model = load_elm_mlm(state, preset, device="meta")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == layout["tensors"]
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.seq_len == 256 and model.token_shape == (1,) and model.vocab_size == 2**16
    # the lean layout: the used weights alone, still strict; its float32 size is the README's file size
    lean = load_elm_mlm(state, preset, keep_unused=False, device="meta")
    gb = sum(p.numel() for p in lean.parameters()) * 4 / 1e9
    assert abs(gb - {"L": 1.51, "XL": 3.27, "XXL": 5.86}[preset]) < 0.006


def test_missing_unused_keys_name_the_known_size_discrepancy(tiny):
    state = {k: v for k, v in tiny.state_dict().items() if not k.startswith("output.")}
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): output\.0\.weight.*keep_unused=False"):
        load_elm_mlm(state, **TINY)
    lean = load_elm_mlm(state, keep_unused=False, **TINY)
    tokens, masked, cond = _inputs()
    with torch.no_grad():
        assert torch.equal(lean.masked_logits(tokens, masked, cond), tiny.masked_logits(tokens, masked, cond))
    state.pop("mlm_layer.bias")
    state["mlm_layer.bogus"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): mlm_layer\.bias.*unexpected keys \(1\): "
                                              r"mlm_layer\.bogus"):
        load_elm_mlm(state, keep_unused=False, **TINY)
    with pytest.raises(ConfigError, match="needs a preset"):
        load_elm_mlm(state)


def test_model_keeps_the_masked_protocol(tiny):
    assert tiny.kind == "masked" and missing_members(tiny, MaskedGenerator) == []
    assert tiny.token_grid == (4, 4) and int(tiny.null_condition(2)[0]) == 5 and tiny.mask_token == 16


def test_logits_structure(tiny):
    tokens, masked, cond = _inputs()
    with torch.no_grad():
        logits = tiny.masked_logits(tokens, masked, cond)
        assert logits.shape == (3, 16, 2, 16) and logits.dtype == torch.float32
        # a masked position's input value is ignored
        other = tokens.clone()
        other[masked] = (other[masked] + 3) % 16
        assert torch.equal(tiny.masked_logits(other, masked, cond), logits)
        # bidirectional: changing the last known position changes the first position's logits
        last = int(torch.nonzero(~masked[0]).max())
        changed = tokens.clone()
        changed[0, last] = (changed[0, last] + 1) % 16
        assert not torch.allclose(tiny.masked_logits(changed, masked, cond)[0, 0], logits[0, 0])
        # the class matters
        assert not torch.allclose(tiny.masked_logits(tokens, masked, cond.flip(0))[0], logits[0])
    with pytest.raises(ConfigError, match="tokens must be"):
        tiny.masked_logits(tokens[..., 0], masked, cond)
    with pytest.raises(ConfigError, match="masked must be a bool tensor"):
        tiny.masked_logits(tokens, masked.long(), cond)


def test_training_loss_is_the_masked_cross_entropy(tiny):
    tokens, masked, cond = _inputs()
    with torch.no_grad():
        logits = tiny.masked_logits(tokens, masked, cond)
        loss = tiny(tokens, cond, masked)
    logp = logits.log_softmax(-1)
    per = -(0.9 * logp.gather(-1, tokens[..., None]).squeeze(-1) + 0.1 * logp.mean(-1))  # smoothing 0.1
    torch.testing.assert_close(loss, per[masked].mean())
    model = ElmMLM(ElmMLMConfig(**TINY)).train()
    drawn = model(tokens, cond, generator=torch.Generator().manual_seed(0))
    drawn.backward()
    assert drawn.isfinite() and model.layers[0].attention.wqkv.weight.grad is not None
    mask = model.random_mask(64, torch.Generator().manual_seed(3))
    counts = mask.sum(1)
    assert bool((counts == counts[0]).all()) and 1 <= int(counts[0]) <= 16


def test_save_load_round_trip(tiny, tmp_path):
    loaded = ElmMLM.from_pretrained(tiny.save_pretrained(tmp_path / "mlm"))
    assert loaded.config == tiny.config
    tokens, masked, cond = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded.masked_logits(tokens, masked, cond), tiny.masked_logits(tokens, masked, cond))


def test_bad_config_is_one_line_error():
    with pytest.raises(ConfigError, match="block_size 15 is not a square"):
        ElmMLMConfig(**{**TINY, "block_size": 15})
    with pytest.raises(ConfigError, match="unknown ELM MLM preset 'M'"):
        ElmMLMConfig.preset("M")
