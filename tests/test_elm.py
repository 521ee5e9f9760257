"""ELM's AR language model against the official fixture (llama/ar_model.py run on CPU): teacher-forced
logits, the RoPE table, and -- through argen's KV cache, the samplers and their sub-token heads -- the
official generate_cfg ids (greedy at three CFG settings, two seeded sampled runs, a prefix), SJD's greedy
ids, the released layouts, and the errors a user meets."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import LAYOUTS, fixture_config, fixture_io, fixture_weights, reference_layouts

from argen import samplers
from argen.errors import ConfigError
from argen.generators.elm import ELM, ELMConfig
from argen.samplers.ar import token_by_token
from argen.samplers.logits import SamplingOptions, draw_position, split_guided

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = fixture_config("elm_lm_tiny", drop=("head_dim", "ffn_hidden", "sub_vocab", "grid", "class_rows", "pos_type",
                                           "vocab_size", "attn_type", "use_adaLN"))
IO = fixture_io("elm_lm_tiny")
RUNS = json.loads((LAYOUTS.parent / "fixtures" / "elm_lm_tiny.json").read_text())["generate_kwargs"]
GREEDY = [k for k in RUNS if k.startswith("gen_greedy")]
SAMPLED = [k for k in RUNS if k.startswith("gen_sampled")]


@pytest.fixture(scope="module")
def model() -> ELM:
    m = ELM(ELMConfig(**ARGS)).eval()
    m.load_state_dict(fixture_weights("elm_lm_tiny"), strict=True)
    return m


def official_rows(logits: torch.Tensor) -> torch.Tensor:
    """(B, N, G, V) -> the official (B, N * G, V) layout, row p * G + g."""
    return logits.flatten(1, 2)


def sample(model: ELM, run: str, sampler: str = "ar", **extra) -> torch.Tensor:
    kw = RUNS[run]
    gen = torch.Generator().manual_seed(kw["seed"])
    codes, _ = samplers.sample(model, IO["labels"], sampler=sampler, generator=gen,
                               cfg_scale=kw["cfg_scale"], cfg_schedule=kw["cfg_schedule"], top_k=kw["top_k"],
                               temperature=kw["temperature"], **extra)
    return codes


def test_rope_table_and_teacher_forced_logits_equal_the_official(model):
    tokens, labels = IO["tokens"], IO["labels"]
    torch.testing.assert_close(model.rope, IO["freqs_cis"], atol=1e-6, rtol=0)
    with torch.no_grad():
        logits = model(tokens, labels)
        null = model(tokens, torch.full_like(labels, ARGS["num_classes"]))
        full = model(tokens, labels, include_last=True)
        prefill = model.prefill(labels, model.new_cache(2))
    assert logits.shape == (2, 16, 2, 16)
    torch.testing.assert_close(official_rows(logits), IO["logits_teacher_forced"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(official_rows(null), IO["logits_teacher_forced_null_class"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(official_rows(full), IO["logits_full"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(prefill, IO["logits_prefill"], atol=1e-5, rtol=1e-4)
    # the official loss: cross-entropy over the flattened (position, head) rows
    loss = F.cross_entropy(logits.reshape(-1, 16), tokens.reshape(-1))
    torch.testing.assert_close(loss.view(1), IO["loss_teacher_forced"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("run", GREEDY + SAMPLED)
def test_guided_step_logits_follow_the_official_schedule(model, run):
    """The per-step guided logits, with argen's CFG schedule (ELM's progress), on the official ids."""
    kw, ids, labels = RUNS[run], IO[f"{run}.ids"], IO["labels"]
    opts = SamplingOptions(kw["cfg_scale"], cfg_schedule=kw["cfg_schedule"], cfg_progress="elm")
    with torch.no_grad():
        both = model(torch.cat([ids, ids]), torch.cat([labels, torch.full_like(labels, ARGS["num_classes"])]))
    for step in range(16):
        guided = split_guided(both[:, step], opts.scale_at(step, 16) if kw["cfg_scale"] > 1 else None)
        torch.testing.assert_close(guided, IO[f"{run}.step_logits"][step], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("run", GREEDY + SAMPLED)
def test_kv_cached_ar_gives_the_official_ids(model, run):
    assert torch.equal(sample(model, run), IO[f"{run}.ids"])


@pytest.mark.parametrize("run", GREEDY)
@pytest.mark.parametrize("window,init", [(4, "repeat-left"), (16, "repeat-above"), (3, "random")])
def test_sjd_gives_the_official_greedy_ids(model, run, window, init):
    assert torch.equal(sample(model, run, "sjd", window=window, init=init), IO[f"{run}.ids"])


@pytest.mark.parametrize("run", SAMPLED)
def test_sjd_with_a_window_of_one_is_ar_bitwise(model, run):
    assert torch.equal(sample(model, run, "sjd", window=1), IO[f"{run}.ids"])


def test_a_given_prefix_is_continued_as_the_official(model):
    prefix, labels = IO["gen_prefix6_greedy_cfg2.prefix"], IO["labels"]
    opts = SamplingOptions(2.0, top_k=1, cfg_progress="elm")
    gen = torch.Generator().manual_seed(0)
    codes, _ = token_by_token(model, labels, opts, lambda i, lg: draw_position(lg, opts, gen), "ar", progress=False,
                              callback=None, callback_every=16, compile=False, prefix=prefix)
    assert torch.equal(codes, IO["gen_prefix6_greedy_cfg2.ids"])


def layout_config(name: str) -> tuple[ELMConfig, dict]:
    layout = json.loads((LAYOUTS / f"{name}.json").read_text())
    d = layout["derived"]
    cfg = ELMConfig(dim=d["dim"], n_layer=d["n_layer"], n_head=d["n_head"], token_each=d["token_each"],
                    code_dim=d["code_dim"], block_size=d["block_size"], num_classes=d["class_rows"] - 1)
    return cfg, layout


@pytest.mark.parametrize("name", sorted(reference_layouts("elm_ar_*")))
def test_every_released_layout_loads_strictly(name):
    cfg, layout = layout_config(name)
    with torch.device("meta"):
        model = ELM(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == layout["tensors"]
    assert sum(p.numel() for p in model.parameters()) == layout["num_params"]
    state = {k: torch.empty(v, device="meta") for k, v in layout["tensors"].items()}
    model.load_state_dict(state, strict=True, assign=True)


def test_presets_are_the_official_sizes():
    for name, (layers, heads, dim) in {"L": (24, 16, 1024), "XL": (36, 20, 1280), "XXL": (48, 24, 1536),
                                       "2B": (48, 28, 1792)}.items():
        c = ELMConfig.preset(name, token_each=2, code_dim=12)
        assert (c.n_layer, c.n_head, c.dim, c.vocab_size, c.bits) == (layers, heads, dim, 4096, 24)


def test_bad_tokens_and_configs_are_one_line_errors(model):
    labels = IO["labels"]
    with pytest.raises(ConfigError, match=r"sub-token ids must lie in \[0, 16\) \(code_dim 4\), got \[16, 16\]"):
        model(torch.full((2, 16, 2), 16), labels)
    with pytest.raises(ConfigError, match=r"integer sub-token ids \(B, N, 2\), got \(2, 16\)"):
        model(torch.zeros(2, 16, dtype=torch.long), labels)
    with pytest.raises(ConfigError, match="vocabulary is 2 \\*\\* code_dim = 16, got vocab_size 16384"):
        ELMConfig(**{**ARGS, "vocab_size": 16384})
    with pytest.raises(ConfigError, match="class id"):
        samplers.sample(model, [10], seed=0)
    with pytest.raises(ConfigError, match="cannot drive ELM: .* hold 2 sub-tokens; samplers for it: ar, sjd"):
        samplers.sample(model, [1], sampler="flow", seed=0)


def test_elm_guidance_ramps_are_the_official_values_bitwise():
    """generate_cfg's schedules at r = (step + 1) / steps (square_root: step / steps), numpy as the official."""
    import numpy as np

    cfg, steps = 4.0, 7
    for step in range(steps):
        r = (step + 1) / steps
        official = {"constant": cfg, "linear": 1.0 + (cfg - 1.0) * r,
                    "cos": 1.0 + (cfg - 1.0) * np.cos(-np.pi / 2 + r * (np.pi / 2)),
                    "log": 1.0 + (cfg - 1.0) * np.log1p(r * (np.e - 1.0)) / np.log1p(np.e - 1.0),
                    "square": 1.0 + (cfg - 1) * r**2, "square_root": 1.0 + (cfg - 1.0) * (step / steps) ** 0.5}
        for name, want in official.items():
            got = SamplingOptions(cfg, cfg_schedule=name, cfg_progress="elm").scale_at(step, steps)
            assert got == float(want), (name, step, got, want)
    # other models read the ramps from 1 at the first token to cfg at the last
    span = [SamplingOptions(cfg, cfg_schedule="cos").scale_at(i, steps) for i in (0, steps - 1)]
    assert span == pytest.approx([1.0, cfg], abs=1e-12)
    with pytest.raises(ConfigError, match="cfg_progress must be one of span, elm"):
        SamplingOptions(cfg, cfg_progress="steps")
