"""The AR sampler and the shared logit processing."""
import pytest
import torch

import argen.samplers as S
from argen.errors import ConfigError
from argen.generators import LlamaGen, LlamaGenConfig
from argen.samplers.logits import SamplingOptions, process_logits, top_k_filter, top_p_filter


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaGenConfig(dim=64, n_layer=2, n_head=4, n_kv_head=2, vocab_size=32, block_size=16, num_classes=5)
    return LlamaGen(cfg).eval()


def test_kv_cache_decoding_equals_full_forward(model):
    tokens = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([0, 4, 5])  # 5 = the null class
    with torch.no_grad():
        full = model(tokens, classes)
        cache = model.new_cache(3)
        steps = [model.prefill(classes, cache)]
        for i in range(15):
            steps.append(model.decode(tokens[:, i : i + 1], cache)[:, -1])
        windowed_cache = model.new_cache(3)
        first = model.prefill(classes, windowed_cache)
        window = model.decode(tokens[:, :15], windowed_cache)  # all at once (causal window)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat([first[:, None], window], 1), full, atol=1e-5, rtol=1e-4)


def test_ragged_cache_decoding_equals_full_forward(model):
    """Rows at different lengths (as after speculative rejection) still give the full-forward logits."""
    tokens = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(2))
    classes = torch.tensor([1, 2, 3])
    with torch.no_grad():
        full = model(tokens, classes)
        cache = model.new_cache(3)
        model.prefill(classes, cache)
        model.decode(tokens[:, :8], cache)  # garbage beyond each row's kept length is overwritten
        keep = torch.tensor([3, 6, 1])  # tokens kept per row
        cache.truncate(1 + keep)
        window = torch.stack([tokens[b, k : k + 4] for b, k in enumerate(keep.tolist())])
        logits = model.decode(window, cache)
    for b, k in enumerate(keep.tolist()):
        torch.testing.assert_close(logits[b], full[b, k + 1 : k + 5], atol=1e-5, rtol=1e-4)


def test_same_seed_same_codes_and_different_seeds_differ(model):
    a, sa = S.sample(model, [0, 1], seed=7, cfg_scale=2.0, top_k=10)
    b, _ = S.sample(model, [0, 1], seed=7, cfg_scale=2.0, top_k=10)
    c, _ = S.sample(model, [0, 1], seed=8, cfg_scale=2.0, top_k=10)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (2, 16) and a.dtype == torch.int64 and int(a.max()) < 32
    assert sa.seed == 7 and sa.forward_passes == 16 and sa.guided_rows == 4 and sa.wall_time_s > 0
    g = torch.Generator().manual_seed(7)
    d, sd = S.sample(model, [0, 1], generator=g, cfg_scale=2.0, top_k=10)
    assert torch.equal(a, d)


def test_unseeded_runs_record_their_seed(model):
    a, st = S.sample(model, [0])
    b, _ = S.sample(model, [0], seed=st.seed)
    assert torch.equal(a, b)


def test_greedy_and_temperature_zero_agree(model):
    a, _ = S.sample(model, [2, 3], greedy=True, cfg_scale=3.0)
    b, _ = S.sample(model, [2, 3], temperature=0.0, cfg_scale=3.0, seed=5)
    c, _ = S.sample(model, [2, 3], top_k=1, cfg_scale=3.0, seed=9)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_top_k_keeps_ties_and_top_p_keeps_the_crossing_token():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0]])
    kept = top_k_filter(logits, 2).isfinite()
    assert kept.tolist() == [[True, False, True, True, False]]  # the tie at the 2nd value stays
    probs = torch.tensor([[0.5, 0.1, 0.25, 0.15]])
    lp = probs.log()
    assert top_p_filter(lp, 0.45).isfinite().tolist() == [[True, False, False, False]]
    assert top_p_filter(lp, 0.6).isfinite().tolist() == [[True, False, True, False]]
    assert top_p_filter(lp, 0.8).isfinite().tolist() == [[True, False, True, True]]
    assert top_p_filter(lp, 1.0).isfinite().all()
    assert top_p_filter(lp, 0.01).isfinite().tolist() == [[True, False, False, False]]


def test_sampling_frequencies_follow_the_processed_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0]).expand(200_000, 5)
    opts = SamplingOptions(temperature=0.7, top_k=4, top_p=0.9)
    g = torch.Generator().manual_seed(0)
    ids = S.draw(logits, opts, g)
    freq = torch.bincount(ids, minlength=5).float() / ids.numel()
    target = process_logits(logits[:1], opts).softmax(-1)[0]
    assert target[4] == 0 and target[3] == 0  # top-k 4 removes the last, top-p 0.9 the next
    torch.testing.assert_close(freq, target, atol=5e-3, rtol=0)


def test_cfg_schedules():
    const = SamplingOptions(cfg_scale=4.0)
    assert [const.scale_at(i, 16) for i in (0, 15)] == [4.0, 4.0]
    lin = SamplingOptions(cfg_scale=4.0, cfg_schedule="linear")
    assert lin.scale_at(0, 16) == 1.0 and lin.scale_at(15, 16) == 4.0
    interval = SamplingOptions(cfg_scale=4.0, cfg_interval=4)
    assert interval.scale_at(5, 16) == 4.0 and interval.scale_at(6, 16) is None
    assert SamplingOptions(cfg_scale=1.0).scale_at(0, 16) is None  # 1.0 = no guidance


def test_cfg_interval_drops_the_unconditional_rows_without_changing_tokens(model):
    """Guidance that ends early: argen stops computing the null rows; the tokens equal a run that
    keeps them and takes the conditional half (the official behaviour)."""
    a, _ = S.sample(model, [1, 2], cfg_scale=3.0, cfg_interval=3, greedy=True)
    # reference: the same thing by hand with the full CFG batch all the way
    cond = torch.tensor([1, 2])
    inp = torch.cat([cond, model.null_condition(2)])
    with torch.no_grad():
        cache = model.new_cache(4)
        logits = model.prefill(inp, cache)
        out = []
        for i in range(16):
            if i:
                x = torch.tensor(out[-1])[:, None]
                logits = model.decode(torch.cat([x, x]), cache)[:, -1]
            c, u = logits.chunk(2)
            guided = u + (c - u) * 3.0 if i <= 4 else c
            out.append(guided.argmax(-1).tolist())
    assert a.tolist() == torch.tensor(out).T.tolist()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=-0.1), "temperature"),
        (dict(cfg_scale=-1.0), "cfg_scale"),
        (dict(cfg_scale=float("nan")), "cfg_scale"),
        (dict(top_k=-3), "top_k"),
        (dict(cfg_interval=-2), "cfg_interval"),
        (dict(cfg_schedule="cosine"), "cfg_schedule"),
        (dict(sampler="beam"), "unknown sampler 'beam'.*ar"),
        (dict(window=4), "unknown option.*window"),
        (dict(seed=-1), "seed"),
    ],
)
def test_invalid_options_are_clear_errors(model, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        S.sample(model, [0], **kwargs)


@pytest.mark.parametrize("classes, match", [([5], r"out of range.*0\.\.4"), ([-1], "out of range"), ([[1, 2]], "1-D"),
                                            ([], "no classes")])
def test_bad_classes(model, classes, match):
    with pytest.raises(ConfigError, match=match):
        S.sample(model, classes)


def test_samplers_for_model(model):
    assert S.samplers_for(model) == ["ar", "sjd", "flow"] and S.default_sampler(model) == "ar"
    with pytest.raises(ConfigError, match="Tensor is not an argen generator"):
        S.sample(torch.zeros(1), [0])


def test_samplers_register_for_protocol_kinds_only():
    with pytest.raises(ConfigError,
                       match="unknown generator kind 'pixels'; kinds .*: token, scale, continuous, flow-scale"):
        S.register_sampler("mine", lambda *a: None, ["pixels"])
    assert "mine" not in S.SAMPLERS
