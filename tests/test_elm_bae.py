"""ELM's binary autoencoder reproduces the official outputs (tests/reference/fixtures/elm_bae_tiny), maps
bits <-> sub-tokens exactly as the official code (elm_lm_tiny's ``map.*`` and ``pipeline.*``), loads every
released layout strictly and reads the official ``binaryae_ema.th`` format."""
import json

import pytest
import torch
from conftest import LAYOUTS, fixture_config, fixture_io, fixture_weights, reference_layouts
from test_layouts import _meta_state

from argen.convert.elm import load_bae
from argen.errors import CheckpointError, ConfigError
from argen.generators.protocol import missing_members
from argen.modeling import Pretrained
from argen.tokenizers.binary import BinaryAEConfig, BinaryAutoEncoder, bits_to_tokens, codebook_loss, tokens_to_bits
from argen.tokenizers.protocol import BitTokenizer, tokenizer_protocol

ATOL, RTOL = 1e-5, 1e-4
# the official hyper-parameters of the fixture (the JSON adds derived, non-argument fields)
TINY_ARGS = {k: v for k, v in fixture_config("elm_bae_tiny").items()
             if k in ("img_size", "nf", "ch_mult", "res_blocks", "attn_resolutions", "emb_dim", "norm_first",
                      "use_tanh", "deterministic", "gen_mul")}
RELEASED = dict(img_size=256, nf=128, ch_mult=[1, 1, 2, 2, 4], res_blocks=2, attn_resolutions=[16], emb_dim=256,
                norm_first=True)


@pytest.fixture(scope="module")
def bae():
    return load_bae(fixture_weights("elm_bae_tiny"), **TINY_ARGS)


@pytest.fixture(scope="module")
def io():
    return fixture_io("elm_bae_tiny")


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_fixture_official_space(bae, io):
    x = io["image"]  # [0, 1], as the official pipeline
    close(bae.encoder_output(x), io["encoder_out"])
    close(bae.bit_logits(x), io["bit_logits"])
    probs = bae.bit_probs(x)
    close(probs, io["bit_probs"])
    bits = (probs > 0.5).float()
    assert torch.equal(bits, io["bits_deterministic"]) and torch.equal(bits, io["forward_code_only"])
    close(bae.bits_to_z(bits), io["bits_to_z"])
    close(bae.bits_to_z(bits), io["quantize_z_q"])  # the straight-through value, to float rounding
    close(bae.generator.blocks[0](bae.bits_to_z(bits)), io["generator_block0_out"])  # the norm_first GroupNorm
    close(codebook_loss(probs).reshape(1), io["quantize_codebook_loss"])
    close(bae.decode_bits(bits), io["decode_bits_image"])
    close(bae.decode_bits(io["bits_random"]), io["decode_random_bits_image"])
    close(bae.decode_bits(io["bits_random"]), io["forward_code_image"])
    close(bae.decode_z(io["encode_quant"]), io["decode_continuous_image"])


@torch.no_grad()
def test_fixture_through_argen_range(bae, io):
    """encode of 2x - 1 is the official encode of x; decode and forward give 2 * official - 1."""
    images = io["image"] * 2 - 1
    ids = bae.encode(images)
    assert ids.shape == (2, 4, 4, 1) and ids.dtype == torch.int64
    assert torch.equal(tokens_to_bits(ids, 8), io["bits_deterministic"])
    assert torch.equal(bae.encode_bits(images), io["bits_deterministic"])
    close(bae.decode(ids), io["decode_bits_image"] * 2 - 1)
    recon, losses = bae(images)  # eval mode: thresholded bits, straight-through as the official forward
    close(recon, io["forward_image"] * 2 - 1)
    close(losses["code"].reshape(1), io["forward_codebook_loss"])


@torch.no_grad()
def test_seeded_bernoulli_encode(bae, io):
    images = io["image"] * 2 - 1
    bits = bae.encode_bits(images, sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(bits, io["bits_bernoulli"])
    ids = bae.encode(images, sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, bits_to_tokens(io["bits_bernoulli"], 1))
    close(bae.bits_to_z(bits), io["encode_quant_bernoulli"])
    assert not torch.equal(ids, bae.encode(images, sample=True, generator=torch.Generator().manual_seed(1)))


def test_bits_tokens_mapping_matches_the_official_code():
    lm = fixture_io("elm_lm_tiny")  # token_each 2, code_dim 4, 4x4 grid; official ids are (B, h*w, token_each)
    bits, tokens = lm["map.bits"], lm["map.tokens"]
    assert torch.equal(bits_to_tokens(bits, 2).reshape(8, 16, 2), lm["map.tokens_from_bits"])
    assert torch.equal(tokens_to_bits(tokens.reshape(8, 4, 4, 2), 4), lm["map.bits_from_tokens"])
    assert torch.equal(tokens_to_bits(bits_to_tokens(bits, 2), 4), bits)
    assert torch.equal(tokens_to_bits(lm["pipeline.ids"].reshape(8, 4, 4, 2), 4), lm["pipeline.bits"])
    # MSB first: bit channel g*code_dim + j weighs 2^(code_dim-1-j)
    one = torch.zeros(1, 8, 1, 1)
    one[0, 0] = one[0, 7] = 1
    assert bits_to_tokens(one, 2).tolist() == [[[[8, 1]]]] and bits_to_tokens(one, 1).tolist() == [[[[129]]]]


@torch.no_grad()
def test_the_official_end_to_end_decode(bae):
    """elm_lm_tiny's sampler output decoded by this BAE, split 2 x 4 bits."""
    lm = fixture_io("elm_lm_tiny")
    split = bae.with_token_each(2)
    ids = lm["pipeline.ids"].reshape(8, 4, 4, 2)
    close(split.decode_bits(lm["pipeline.bits"]), lm["pipeline.image"])
    close(split.decode(ids), lm["pipeline.image"] * 2 - 1)


def test_protocol_and_split(bae):
    assert bae.kind == "bits" and tokenizer_protocol("bits") is BitTokenizer
    assert missing_members(bae, BitTokenizer) == [] and missing_members(BinaryAutoEncoder, BitTokenizer) == []
    assert (bae.bits, bae.token_each, bae.code_dim, bae.codebook_size, bae.downsample) == (8, 1, 8, 256, 8)
    assert bae.latent_grid(32) == (4, 4) and bae.latent_grid((64, 32)) == (8, 4)
    split = bae.with_token_each(4)
    assert (split.token_each, split.code_dim, split.codebook_size) == (4, 2, 4)
    assert split.quantize.embed.weight.data_ptr() == bae.quantize.embed.weight.data_ptr() and not split.training
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tokens_to_bits(split.encode(images), 2), tokens_to_bits(bae.encode(images), 8))
    with pytest.raises(ConfigError, match="token_each=3 does not divide the 8 bits"):
        bae.with_token_each(3)


@pytest.mark.parametrize("args, message", [
    (dict(codebook_size=16, token_each=3), "token_each=3 does not divide the 16 bits"),
    (dict(use_tanh=True), "use_tanh=True"),
    (dict(ch_mult=[]), "ch_mult"),
    (dict(nf=24), "multiples of norm_groups=32"),
])
def test_bad_config(args, message):
    with pytest.raises(ConfigError, match=message):
        BinaryAEConfig(**args)


def test_bad_input_is_one_line(bae):
    cases = [
        (lambda: bae.decode(torch.zeros(1, 4, 4, 2, dtype=torch.long)), r"ids must be \(B, h, w, token_each=1\)"),
        (lambda: bae.decode(torch.full((1, 4, 4, 1), 256)), r"ids must be in \[0, 256\)"),
        (lambda: bae.decode(torch.full((1, 4, 4, 1), -1)), r"ids must be in \[0, 256\)"),
        (lambda: bae.decode(torch.zeros(1, 4, 4, 1)), "ids must be an integer tensor"),
        (lambda: bae.encode(torch.zeros(1, 3, 30, 32)), "multiple of this VAE's downsample factor 8"),
        (lambda: bae.encode(torch.zeros(1, 4, 32, 32)), r"images must be \(B, 3, H, W\)"),
        (lambda: bits_to_tokens(torch.full((1, 8, 2, 2), 0.5), 1), "bits must be 0 or 1"),
        (lambda: bits_to_tokens(torch.zeros(1, 8, 2, 2), 3), "multiple of token_each=3"),
        (lambda: bae.bits_to_z(torch.zeros(1, 6, 2, 2)), r"bits must be \(B, 8, h, w\)"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_save_pretrained_round_trip(bae, io, tmp_path):
    split = bae.with_token_each(2)
    split.save_pretrained(tmp_path / "bae")
    loaded = Pretrained.from_pretrained(tmp_path / "bae")
    assert type(loaded) is BinaryAutoEncoder and loaded.config == split.config and loaded.token_each == 2
    assert json.loads((tmp_path / "bae" / "config.json").read_text())["_class"] == "elm-bae"
    with torch.no_grad():
        ids = loaded.encode(io["image"] * 2 - 1)
        assert torch.equal(ids, split.encode(io["image"] * 2 - 1))
        assert torch.equal(loaded.decode(ids), split.decode(ids))


def test_every_released_layout_loads_strictly():
    names = reference_layouts("elm_bae_*.json")
    assert names == {"elm_bae_16", "elm_bae_20", "elm_bae_24"}
    for name in sorted(names):
        layout = json.loads((LAYOUTS / f"{name}.json").read_text())
        k = layout["derived"]["codebook_size"]
        state = _meta_state(layout)
        bae = load_bae(state, device="meta")  # the defaults are the released hyper-parameters, K from the file
        assert bae.bits == k and all(getattr(bae.config, a) == v for a, v in RELEASED.items())
        assert sum(p.numel() for p in bae.parameters()) == layout["num_params"]
        assert bae.latent_grid(256) == (16, 16)
        assert load_bae(state, bits=k, token_each=2, device="meta", **RELEASED).code_dim == k // 2
        with pytest.raises(CheckpointError, match="saved with norm_first=True") as err:
            load_bae(state, norm_first=False, device="meta")
        assert "generator.blocks" in str(err.value) and "\n" not in str(err.value)


def test_load_official_file(io, tmp_path):
    """The released format: the training wrapper's state dict, ``ae.*`` next to the discriminator's and LPIPS's."""
    weights = fixture_weights("elm_bae_tiny")
    wrapped = {f"ae.{k}": v for k, v in weights.items()}
    wrapped.update({"disc.main.0.weight": torch.zeros(4, 3, 4, 4), "perceptual.lin0.model.1.weight": torch.zeros(1)})
    torch.save(wrapped, tmp_path / "binaryae_ema.th")
    bae = load_bae(tmp_path / "binaryae_ema.th", token_each=2, **TINY_ARGS)
    assert not bae.training and (bae.bits, bae.code_dim) == (8, 4)
    with torch.no_grad():
        close(bae.decode_bits(io["bits_deterministic"]), io["decode_bits_image"])
    # missing / unexpected keys are named
    del wrapped["ae.quantize.proj.0.bias"]
    wrapped["ae.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): quantize.proj.0.bias.*unexpected keys.*extra"):
        load_bae(wrapped, **TINY_ARGS)
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_bae(weights, bits=16, **TINY_ARGS)
    with pytest.raises(CheckpointError, match="no 'quantize.embed.weight'"):
        load_bae({"disc.x": torch.zeros(1)}, **TINY_ARGS)
    (tmp_path / "bad.th").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_bae(tmp_path / "bad.th")
    with pytest.raises(ConfigError, match="unknown ELM BAE argument"):
        load_bae(weights, ch=3)
