"""VAR-DD (Distilled Decoding student of VAR): the student reproduces the official outputs recorded in
tests/reference/fixtures/dd_var_tiny (forward at every t and per-sample t, final_predict, get_final_sequence,
the few-step sample.py loops down to f_hat and the image), driven through the DistilledGenerator protocol
only; every released layout loads; the loader unwraps the official training checkpoints strictly."""
import dataclasses
import json

import pytest
import torch
from conftest import LAYOUTS, fixture_config, fixture_io, fixture_weights, reference_layouts

from argen.convert.checkpoint import load_into
from argen.convert.dd_var import load_dd_var
from argen.convert.var import load_var_vae
from argen.errors import CheckpointError, ConfigError
from argen.generators.dd_var import DDVAR, DDVARConfig, decode_scale_tokens, scale_tokens_to_fhat
from argen.generators.protocol import DistilledGenerator, check_generator_class, missing_members

ATOL, RTOL = 1e-5, 1e-4
NAME = "dd_var_tiny"
RUNS = {"sample_1step": [0], "sample_2step": [0, 2], "sample_3step": [0, 1, 3]}
SPLIT = 2  # the fixture's loss_split_t


def _dd_args() -> dict:
    fields = {f.name for f in dataclasses.fields(DDVARConfig)}
    return {k: v for k, v in fixture_config(NAME)["dd"].items() if k in fields}


@pytest.fixture(scope="module")
def vae():
    cfg = {k: v for k, v in fixture_config(NAME)["vae"].items() if k != "image_size"}
    return load_var_vae(fixture_weights("var_tiny_vqvae"), **cfg)


@pytest.fixture(scope="module")
def dd(vae):
    return load_dd_var(fixture_weights(NAME), vae=vae, drop_path_rate=0.0, two_step_t=2, loss_split_t=SPLIT,
                       **_dd_args())


@pytest.fixture(scope="module")
def io():
    return fixture_io(NAME)


def _close(actual, expected, atol=ATOL, rtol=RTOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def _close_logits(actual, expected, atol=ATOL):
    """final_predict logits: the -inf entries exactly, the finite ones to round-off."""
    inf = torch.isinf(expected)
    assert torch.equal(torch.isinf(actual), inf) and bool((actual[inf] == expected[inf]).all())
    _close(actual[~inf], expected[~inf], atol=atol)


def test_config_and_protocol(dd, io):
    check_generator_class(DDVAR)
    assert not missing_members(dd, DistilledGenerator) and dd.kind == "distilled"
    assert dd.sampling_conventions == {}
    assert (dd.token_dim, dd.num_t, dd.seq_len, dd.default_split) == (8, 4, 30, 2)
    assert dd.default_t_list(1) == [0] and dd.default_t_list(2) == [0, 2]
    with pytest.raises(ConfigError, match="1 or 2 steps"):
        dd.default_t_list(3)
    assert torch.equal(dd.token_starts(), io["token_starts"])
    assert dd.first_noisy(torch.tensor([0.0, 1.0, 2.0, 3.0])).tolist() == [0, 1, 5, 14]
    assert torch.equal(dd.code_vectors, io["codebook"])
    for preset, (second, split) in {"dd-var-d16": (5, 5), "dd-var-d20": (4, 4), "dd-var-d24": (4, 4)}.items():
        cfg = DDVARConfig.preset(preset)
        assert (cfg.two_step_t, cfg.loss_split_t, cfg.shared_aln, cfg.attn_l2_norm) == (second, split, False, True)
        assert (cfg.embed_dim, cfg.num_heads, cfg.vocab_size, cfg.Cvae) == (64 * cfg.depth, cfg.depth, 4096, 32)
    with pytest.raises(ConfigError, match="two_step_t must lie in 1..3"):
        DDVARConfig(**_dd_args(), two_step_t=4)
    with pytest.raises(ConfigError, match="unknown VAR-DD preset"):
        DDVARConfig.preset("d16")


@pytest.mark.parametrize("key", ["t0", "t1", "t2", "t3", "mixed0"])
def test_forward(dd, io, key):
    """One student pass at every t, and at a different t per sample (float t, as the official scripts pass)."""
    p = f"forward.{key}"
    t = io[f"{p}.t"]
    assert torch.equal(dd.perturb(io["x_clean"], t, io["noise"]), io[f"{p}.x_t"])
    with torch.no_grad():
        tokens, logits = dd(io[f"{p}.x_t"], io["labels"], t)
    assert tokens.shape == (2, 30, 8) and logits.shape == (2, 30, 64)
    _close(tokens, io[f"{p}.tokens"])
    _close(logits, io[f"{p}.logits"])


@pytest.mark.parametrize("t", [1, 3])
def test_final_predict(dd, io, t):
    tt = torch.zeros(2) + t
    x_t = dd.perturb(io["x_soft"], tt, io["noise"])
    assert torch.equal(x_t, io[f"final_predict.t{t}.x_t"])
    with torch.no_grad():
        tokens, logits = dd.final_predict(x_t, io["labels"], tt)
    n = int(io["token_starts"][t])
    assert torch.equal(tokens[:, :n], x_t[:, :n])  # passed through bit-exactly
    assert bool(torch.isinf(logits[:, :n]).sum(-1).eq(63).all()) and not torch.isinf(logits[:, n:]).any()
    _close(tokens, io[f"final_predict.t{t}.tokens"])
    _close_logits(logits, io[f"final_predict.t{t}.logits"])


def test_final_predict_per_sample_t(dd, io):
    """Rows at different t give what each row gives alone."""
    t = torch.tensor([1.0, 3.0])
    x_t = dd.perturb(io["x_soft"], t, io["noise"])
    with torch.no_grad():
        tokens, logits = dd.final_predict(x_t, io["labels"], t)
        for row in range(2):
            tok1, log1 = dd.final_predict(x_t, io["labels"], t[row].expand(2))
            _close(tokens[row], tok1[row])
            _close_logits(logits[row], log1[row])


@pytest.mark.parametrize("t,split", [(1, 2), (3, 1), (3, 3)])
def test_final_sequence(dd, io, t, split):
    out = dd.final_sequence(io[f"final_predict.t{t}.tokens"], io[f"final_predict.t{t}.logits"], split)
    expected = io[f"get_final_sequence.t{t}.split{split}"]
    n = int(io["token_starts"][split])
    assert torch.equal(out[:, n:], io[f"final_predict.t{t}.tokens"][:, n:])
    _close(out, expected)


@pytest.mark.parametrize("run", sorted(RUNS))
def test_few_step_sampling(dd, vae, io, run):
    """The official sample.py loop, through the protocol methods only; every step, f_hat and the image."""
    labels, noise = io["labels"], io["noise"]
    x = noise
    with torch.no_grad():
        for i, t in enumerate(RUNS[run]):
            tt = torch.zeros(2) + t
            x_t = dd.perturb(x, tt, noise)
            _close(x_t, io[f"{run}.step{i}.x_t"])
            tokens, logits = dd.final_predict(x_t, labels, tt)
            _close(tokens, io[f"{run}.step{i}.final_tokens"])
            _close_logits(logits, io[f"{run}.step{i}.final_logits"])
            x = dd.final_sequence(tokens, logits, SPLIT)
            _close(x, io[f"{run}.step{i}.x"])
        f_hat = scale_tokens_to_fhat(vae, x)
        image = decode_scale_tokens(vae, x)
    _close(x, io[f"{run}.x_final"])
    assert torch.equal(dd.nearest_codes(x), io[f"{run}.final_ids_nearest"])
    _close(f_hat, io[f"{run}.f_hat"])
    assert image.shape == (2, 3, 16, 16) and image.min() >= -1 and image.max() <= 1
    _close(image.add(1).mul(0.5), io[f"{run}.image"])


def test_mask_one_token_reaches_its_own_output_and_finer_scales_only(dd, io):
    x = io["noise"].clone()
    bumped = x.clone()
    bumped[:, 6] += 1.0  # a token of real scale 2 (positions 5..13)
    with torch.no_grad():
        a, _ = dd(x, io["labels"], 0.0)
        b, _ = dd(bumped, io["labels"], 0.0)
    changed = (a - b).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.nonzero().flatten().tolist() == [6, *range(14, 30)]


def test_bad_input(dd, io):
    x, labels = io["noise"], io["labels"]
    with pytest.raises(ConfigError, match=r"t must lie in 0..3"):
        dd(x, labels, torch.tensor([0.0, 4.0]))
    with pytest.raises(ConfigError, match="whole scale indices"):
        dd.perturb(x, torch.tensor([0.5, 1.0]), x)
    with pytest.raises(ConfigError, match=r"tokens must be \(B, 30, 8\)"):
        dd(x[:, :29], labels, 0)
    with pytest.raises(ConfigError, match=r"class id\(s\) \[10\] out of range"):
        dd(x, torch.tensor([3, 10]), 0)
    with pytest.raises(ConfigError, match="no VQ-VAE bound"):
        DDVAR(dd.config).nearest_codes(x)


# -- the released layouts -------------------------------------------------------------------------------------
LAYOUT_PRESETS = {"dd_var_d16": ("dd-var-d16", 328.2), "dd_var_d20": ("dd-var-d20", 635.4),
                  "dd_var_d24": ("dd-var-d24", 1092.5)}


def test_every_dd_var_layout_is_covered():
    assert reference_layouts("dd_var_*.json") == set(LAYOUT_PRESETS)


@pytest.mark.parametrize("name", sorted(LAYOUT_PRESETS))
def test_dd_var_layout(name):
    preset, millions = LAYOUT_PRESETS[name]
    layout = json.loads((LAYOUTS / f"{name}.json").read_text())
    model = DDVAR.from_config(DDVARConfig.preset(preset), device="meta")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == layout["tensors"]
    load_into(model, {k: torch.empty(s, device="meta") for k, s in layout["tensors"].items()}, source=name)
    count = sum(p.numel() for p in model.parameters())
    assert count == layout["num_params"] and round(count / 1e6, 1) == millions
    assert model.seq_len == layout["derived"]["token_positions"] and model.lvl_1L.shape[1] == layout["derived"]["L"]


# -- the loader -----------------------------------------------------------------------------------------------
def _load(path, vae, **kw):
    return load_dd_var(path, vae=vae, two_step_t=2, loss_split_t=SPLIT, **_dd_args(), **kw)


def test_loader_unwraps_the_official_training_checkpoint(vae, io, tmp_path):
    """["trainer"]["ema_parameters"] (the default, as the official sampler) or ["trainer"]["var_wo_ddp"];
    EMA weights without the buffers argen recomputes load too."""
    ema = fixture_weights(NAME)
    raw = {k: v + 1 if k == "head.bias" else v for k, v in ema.items()}
    params_only = {k: v for k, v in ema.items() if k not in ("lvl_1L", "attn_bias_for_masking")
                   and not k.endswith("zero_k_bias")}
    torch.save({"trainer": {"ema_parameters": params_only, "var_wo_ddp": raw}, "args": {}}, tmp_path / "dd.pth")
    with torch.no_grad():
        auto = _load(tmp_path / "dd.pth", vae)(io["forward.t1.x_t"], io["labels"], io["forward.t1.t"])
        live = _load(tmp_path / "dd.pth", vae, weights="raw")(io["forward.t1.x_t"], io["labels"], io["forward.t1.t"])
    _close(auto[1], io["forward.t1.logits"])
    _close(live[1], io["forward.t1.logits"] + 1)
    model = _load(tmp_path / "dd.pth", vae, weights="ema")
    assert torch.equal(model.attn_bias_for_masking, ema["attn_bias_for_masking"])
    assert not model.training and model.tokenizer is vae


def test_loader_names_missing_and_unexpected_keys(vae, tmp_path):
    ema = fixture_weights(NAME)
    missing = {k: v for k, v in ema.items() if k != "n_d_embed.weight"}
    torch.save({"trainer": {"ema_parameters": missing}}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): n_d_embed.weight") as err:
        _load(tmp_path / "missing.pth", vae)
    assert "\n" not in str(err.value)
    torch.save({"trainer": {"ema_parameters": {**ema, "extra.weight": torch.zeros(1)}}}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): extra.weight") as err:
        _load(tmp_path / "extra.pth", vae)
    assert "\n" not in str(err.value)
    torch.save({"trainer": {"var_wo_ddp": ema}}, tmp_path / "raw_only.pth")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        _load(tmp_path / "raw_only.pth", vae, weights="ema")
    with pytest.raises(ConfigError, match="needs a preset"):
        load_dd_var(ema, vae=vae)


def test_save_and_load_pretrained(dd, vae, io, tmp_path):
    from argen.modeling import Pretrained

    dd.save_pretrained(tmp_path / "dd")
    again = Pretrained.from_pretrained(tmp_path / "dd")
    assert type(again) is DDVAR and again.config == dd.config
    with torch.no_grad():
        a = dd(io["forward.mixed0.x_t"], io["labels"], io["forward.mixed0.t"])
        b = again(io["forward.mixed0.x_t"], io["labels"], io["forward.mixed0.t"])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
