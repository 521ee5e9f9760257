"""LlamaGen Distilled Decoding student: argen's DDLlamaGen reproduces the official DDTransformer outputs recorded in
tests/reference/fixtures/dd_llamagen_tiny (forward at every t, final_predict, get_final_x_BLC, the few-step runs of
eval_fewstep.py driven through the DistilledGenerator protocol, the decoded images); every released layout builds
and loads strictly; the official checkpoint wrappings load and bad checkpoints name the key."""
import json

import pytest
import torch
from conftest import LAYOUTS, fixture_config, fixture_io, fixture_weights, reference_layouts

from argen.convert.checkpoint import load_into
from argen.convert.dd_llamagen import dd_llamagen_config, load_dd_llamagen
from argen.convert.llamagen import load_vq
from argen.errors import CheckpointError, ConfigError
from argen.generators.dd_llamagen import DDLlamaGen, DDLlamaGenConfig
from argen.generators.protocol import check_generator_class

ATOL, RTOL = 1e-5, 1e-5
NAME = "dd_llamagen_tiny"
CFG = fixture_config(NAME)
# the official ModelArgs of the tiny student (the JSON adds derived fields), the fixture's sampling split
DD_ARGS = {k: v for k, v in CFG["dd"].items() if k not in ("ffn_hidden", "grid", "head_dim")}
DD_ARGS.update(split_t=CFG["sampling"]["split_t"], two_step_t=CFG["sampling"]["few_step_runs"]["sample_2step"][1])
RUNS = CFG["sampling"]["few_step_runs"]
LAYOUT_PRESETS = {"dd_llamagen_b": "dd-llamagen-b", "dd_llamagen_l": "dd-llamagen-l"}


@pytest.fixture(scope="module")
def io():
    return fixture_io(NAME)


@pytest.fixture(scope="module")
def vq():
    return load_vq(fixture_weights("llamagen_vq_tiny"), **{k: v for k, v in CFG["vq"].items() if k != "image_size"})


@pytest.fixture(scope="module")
def student(vq):
    return load_dd_llamagen(fixture_weights(NAME), tokenizer=vq, **DD_ARGS)


def _close(actual, expected, what, atol=ATOL, rtol=RTOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _close_logits(actual, expected, what):
    """-inf entries exactly where the official ones are, the finite ones within the tolerance."""
    assert torch.equal(torch.isneginf(actual), torch.isneginf(expected)), what
    assert torch.isfinite(expected[~torch.isneginf(expected)]).all()
    finite = torch.isfinite(expected)
    _close(actual[finite], expected[finite], what)


def _ids_before(t: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N) mask of the positions < t (where the official idx / gt_idx are used and decided)."""
    return torch.arange(n)[None] < t.long()[:, None]


def test_class_implements_the_distilled_protocol(student):
    check_generator_class(DDLlamaGen)
    assert student.kind == "distilled" and student.sampling_conventions == {}
    assert (student.token_dim, student.num_t, student.seq_len, student.default_split) == (8, 16, 16, 5)
    assert student.default_t_list(1) == [0] and student.default_t_list(2) == [0, 5]
    with pytest.raises(ConfigError, match="1 or 2 steps"):
        student.default_t_list(3)
    assert torch.equal(student.first_noisy(torch.tensor([0.0, 7.0])), torch.tensor([0, 7]))


def test_codebook_is_the_normalised_vq_codebook(student, io):
    assert "codebook" not in student.state_dict()  # not an official state_dict entry
    assert torch.equal(student.codebook, io["codebook_l2_normalized"])


@pytest.mark.parametrize("key", [f"forward.t{t}" for t in range(16)] + ["forward.t2_13"])
def test_forward(student, io, key):
    assert io[f"{key}.t"].shape == (2,)
    with torch.no_grad():
        tokens, logits = student(io[f"{key}.x_t"], io["labels"], io[f"{key}.t"])
    _close(tokens, io[f"{key}.tokens"], f"{key} tokens")
    _close(logits, io[f"{key}.logits"], f"{key} logits")


def test_perturb_matches_the_recorded_inputs(student, io):
    for t in (0, 5, 15):
        tt = io[f"forward.t{t}.t"]
        assert torch.equal(student.perturb(io["x_clean"], tt, io["noise"]), io[f"forward.t{t}.x_t"])
    assert torch.equal(student.perturb(io["x_clean"], io["forward.t2_13.t"], io["noise"]), io["forward.t2_13.x_t"])


@pytest.mark.parametrize("tag", ["t3", "t9", "t4_11"])
def test_final_predict(student, io, tag):
    key = f"final_predict.{tag}"
    t, x_t = io[f"{key}.t"], io[f"{key}.x_t"]
    assert torch.equal(student.perturb(io["x_soft"], t, io["noise"]), x_t)
    with torch.no_grad():
        tokens, logits = student.final_predict(x_t, io["labels"], t)
    kept = _ids_before(t, x_t.shape[1])
    assert torch.equal(tokens[kept], x_t[kept])  # passed through bit-exactly
    assert torch.equal(student.nearest_codes(x_t)[kept], io[f"{key}.idx"][kept])
    assert torch.equal(logits[kept].argmax(-1), io[f"{key}.idx"][kept])
    assert (logits[kept] == 0).sum(-1).eq(1).all()
    _close(tokens, io[f"{key}.tokens"], f"{key} tokens")
    _close_logits(logits, io[f"{key}.logits"], f"{key} logits")


@pytest.mark.parametrize("tag,split", [("t3", 5), ("t9", 5), ("t9", 12)])
def test_final_sequence(student, io, tag, split):
    key = f"final_predict.{tag}"
    expected = io[f"get_final_x_BLC.{tag}.split{split}"]
    # on the official final_predict outputs: the same gather / copy, bit for bit
    assert torch.equal(student.final_sequence(io[f"{key}.tokens"], io[f"{key}.logits"], split), expected)
    with torch.no_grad():
        x = student.final_sequence(*student.final_predict(io[f"{key}.x_t"], io["labels"], io[f"{key}.t"]), split)
    _close(x, expected, f"get_final_x_BLC.{tag}.split{split}")


def _decode(vq, x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    g = int(n**0.5)
    return (vq.decode_latents(x.reshape(b, g, g, c).permute(0, 3, 1, 2).contiguous()) + 1) / 2  # no clamp


@pytest.mark.parametrize("run", sorted(RUNS))
def test_few_step_sampling(student, vq, io, run):
    """eval_fewstep.py's loop through the protocol methods only, every per-step tensor compared."""
    labels, noise, split = io["labels"], io["noise"], student.default_split
    x = noise
    with torch.no_grad():
        for i, t in enumerate(RUNS[run]):
            key = f"{run}.step{i}"
            tt = torch.zeros(noise.shape[0]) + t
            x_t = student.perturb(x, tt, noise)
            _close(x_t, io[f"{key}.x_t"], f"{key}.x_t")
            kept = _ids_before(tt, x_t.shape[1])
            assert torch.equal(student.nearest_codes(x_t)[kept], io[f"{key}.gt_idx"][kept]), key
            tokens, logits = student.final_predict(x_t, labels, tt)
            _close(tokens, io[f"{key}.final_tokens"], f"{key}.final_tokens")
            _close_logits(logits, io[f"{key}.final_logits"], f"{key}.final_logits")
            x = student.final_sequence(tokens, logits, split)
            _close(x, io[f"{key}.x"], f"{key}.x")
        image = _decode(vq, x)
    _close(x, io[f"{run}.x_final"], f"{run}.x_final")
    assert torch.equal(logits.argmax(-1), io[f"{run}.final_ids_argmax"])
    assert torch.equal(student.nearest_codes(x), io[f"{run}.final_ids_nearest"])
    _close(image, io[f"{run}.image"], f"{run}.image")


def test_one_step_is_one_forward_at_t0(student, io):
    """The fixture's check: the 1-step output is cat(codebook[argmax(logits)][:, :split], tokens[:, split:])."""
    with torch.no_grad():
        tokens, logits = student(io["noise"], io["labels"], torch.zeros(2))
    expected = torch.cat([student.codebook[logits.argmax(-1)][:, :5], tokens[:, 5:]], 1)
    with torch.no_grad():
        x = student.final_sequence(*student.final_predict(io["noise"], io["labels"], torch.zeros(2)), 5)
    assert torch.equal(x, expected)


def test_bad_steps_and_unbound_codebook(student, io):
    with pytest.raises(ConfigError, match="integers in 0..15"):
        student.perturb(io["x_clean"], torch.tensor([0.0, 16.0]), io["noise"])
    with pytest.raises(ConfigError, match="one per sample"):
        student(io["x_clean"], io["labels"], torch.zeros(3))
    with pytest.raises(ConfigError, match="no KV-cache"):
        student.new_cache(2)
    bare = load_dd_llamagen(fixture_weights(NAME), **DD_ARGS)
    with pytest.raises(ConfigError, match="bind_tokenizer"):
        bare.final_predict(io["x_clean"], io["labels"], torch.full((2,), 3.0))
    with pytest.raises(ConfigError, match="does not fit"):
        bare.bind_tokenizer(torch.randn(32, 8))
    bare.bind_tokenizer(fixture_weights("llamagen_vq_tiny")["quantize.embedding.weight"])
    assert torch.equal(bare.codebook, io["codebook_l2_normalized"])


def test_save_and_load_keep_the_outputs(student, vq, io, tmp_path):
    student.save_pretrained(tmp_path / "dd")
    again = DDLlamaGen.from_pretrained(tmp_path / "dd").bind_tokenizer(vq)
    assert isinstance(again.config, DDLlamaGenConfig) and again.config == student.config
    tt = io["forward.t2_13.t"]
    with torch.no_grad():
        a = student.final_predict(io["forward.t2_13.x_t"], io["labels"], tt)
        b = again.final_predict(io["forward.t2_13.x_t"], io["labels"], tt)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


# -- released layouts ------------------------------------------------------------------------------------------
def test_every_dd_llamagen_layout_is_covered():
    assert reference_layouts("dd_llamagen_*.json") == set(LAYOUT_PRESETS)


@pytest.mark.parametrize("name", sorted(LAYOUT_PRESETS))
def test_layout_builds_and_loads_strictly(name):
    layout = json.loads((LAYOUTS / f"{name}.json").read_text())
    model = DDLlamaGen.from_config(dd_llamagen_config(LAYOUT_PRESETS[name]), device="meta")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == layout["tensors"]
    assert layout["buffers_in_state_dict"] == []
    assert sum(p.numel() for p in model.parameters()) == layout["num_params"]
    assert round(layout["num_params"] / 1e6, 1) == {"dd_llamagen_b": 98.3, "dd_llamagen_l": 326.2}[name]
    load_into(model, {k: torch.empty(s, device="meta") for k, s in layout["tensors"].items()}, source=name)


def test_presets_hold_the_release_settings():
    b, large = DDLlamaGenConfig.preset("dd-llamagen-b"), DDLlamaGenConfig.preset("dd-llamagen-l")
    assert (b.dim, b.n_layer, b.vocab_size, b.block_size, b.num_classes, b.codebook_dim) == (768, 12, 16384, 256,
                                                                                             1000, 8)
    assert (b.two_step_t, b.split_t, large.two_step_t, large.split_t, large.dim) == (80, 80, 80, 130, 1024)
    with pytest.raises(ConfigError, match="unknown LlamaGen DD student preset"):
        DDLlamaGenConfig.preset("GPT-XXL")
    with pytest.raises(ConfigError, match="c2i"):
        DDLlamaGenConfig.preset("dd-llamagen-b", model_type="t2i", cls_token_num=120)


# -- the loader --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights,expect", [("auto", "ema"), ("ema", "ema"), ("raw", "model")])
def test_loader_picks_the_official_wrapping(tmp_path, io, vq, weights, expect):
    sd = fixture_weights(NAME)
    live = {k: v + 1 for k, v in sd.items()}
    torch.save({"ema": sd if expect == "ema" else live, "model": sd if expect == "model" else live, "steps": 3},
               tmp_path / "dd.pt")
    m = load_dd_llamagen(tmp_path / "dd.pt", weights=weights, tokenizer=vq, **DD_ARGS)
    assert not m.training and torch.equal(m.n_d_embed.weight, sd["n_d_embed.weight"])
    with torch.no_grad():
        tokens, logits = m(io["forward.t3.x_t"], io["labels"], io["forward.t3.t"])
    _close(tokens, io["forward.t3.tokens"], "tokens")
    _close(logits, io["forward.t3.logits"], "logits")


@pytest.mark.parametrize("wrap", ["flat", "model", "module", "state_dict"])
def test_loader_reads_live_weight_files(tmp_path, wrap):
    sd = fixture_weights(NAME)
    torch.save(sd if wrap == "flat" else {wrap: sd}, tmp_path / "dd.pt")
    m = load_dd_llamagen(tmp_path / "dd.pt", **DD_ARGS)  # "auto" without an "ema" entry: the live weights
    assert torch.equal(m.final_layer_conti.scale_shift_table, sd["final_layer_conti.scale_shift_table"])
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_dd_llamagen(tmp_path / "dd.pt", weights="ema", **DD_ARGS)


def test_loader_names_missing_and_unexpected_keys():
    sd = fixture_weights(NAME)
    missing = {k: v for k, v in sd.items() if k != "n_d_embed.weight"}
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): n_d_embed.weight") as err:
        load_dd_llamagen(missing, **DD_ARGS)
    assert "\n" not in str(err.value)
    extra = dict(sd, **{"final_layer_conti.adaLN_modulation.weight": torch.zeros(2, 64)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): final_layer_conti.adaLN_modulation.weight") \
            as err:
        load_dd_llamagen(extra, **DD_ARGS)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="needs a preset"):
        load_dd_llamagen(sd)
