"""SJD on a real (random-weight) LlamaGen: window 1 is AR bitwise, greedy SJD is greedy AR, options,
stats, errors, and the pipeline / CLI entry points. Distributional exactness: test_exactness.py."""
import json
import subprocess
import sys

import pytest
import torch

import argen.samplers as S
from argen.errors import ArgenError, ConfigError
from argen.generators import VAR, LlamaGen, LlamaGenConfig, VARConfig
from argen.samplers.sjd import INITS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaGenConfig(dim=64, n_layer=2, n_head=4, n_kv_head=2, vocab_size=32, block_size=16, num_classes=5)
    return LlamaGen(cfg).eval()


@pytest.mark.parametrize("opts", [dict(cfg_scale=3.0, top_k=10), dict(top_p=0.9, temperature=0.8), {}])
def test_window_1_is_plain_ar_bitwise(model, opts):
    ar, _ = S.sample(model, [0, 3, 4], seed=5, **opts)
    sjd, st = S.sample(model, [0, 3, 4], sampler="sjd", seed=5, window=1, **opts)
    assert torch.equal(ar, sjd)
    assert st.forward_passes == 16 and st.accept_histogram == [0, 3 * 15]


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("window,ragged", [(16, True), (5, True), (4, False)])
def test_greedy_sjd_equals_greedy_ar(model, init, window, ragged):
    ar, _ = S.sample(model, [0, 1, 2, 4], greedy=True, cfg_scale=2.0)
    sjd, st = S.sample(model, [0, 1, 2, 4], sampler="sjd", greedy=True, cfg_scale=2.0, window=window,
                       init=init, ragged=ragged, seed=0)
    assert torch.equal(ar, sjd)
    assert st.forward_passes <= 16
    assert sum(k * c for k, c in enumerate(st.accept_histogram)) == 4 * 15  # every token after the first


def test_sjd_stats_and_seeds(model):
    a, st = S.sample(model, [1, 2], sampler="sjd", seed=3, cfg_scale=2.0, window=8, init="random")
    b, _ = S.sample(model, [1, 2], sampler="sjd", seed=3, cfg_scale=2.0, window=8, init="random")
    assert torch.equal(a, b) and a.shape == (2, 16)
    assert st.sampler == "sjd" and st.seed == 3 and st.guided_rows == 4
    assert len(st.accept_histogram) == 9 and st.accept_histogram[0] == 0
    assert 2 <= st.forward_passes <= 16 and len(st.accepted_history) == st.forward_passes - 1
    assert st.as_dict()["tokens_per_pass"] == pytest.approx(16 / st.forward_passes)


def test_sjd_bad_input(model):
    for w in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="window must be an integer >= 1"):
            S.sample(model, [0], sampler="sjd", window=w)
    with pytest.raises(ConfigError, match="unknown draft init 'diagonal'; known: repeat-left, repeat-above, random"):
        S.sample(model, [0], sampler="sjd", init="diagonal")
    with pytest.raises(ConfigError, match="unknown option.*windw"):
        S.sample(model, [0], sampler="sjd", windw=4)
    var = VAR(VARConfig(depth=2, embed_dim=32, num_heads=2, vocab_size=16, Cvae=4, num_classes=3, patch_nums=(1, 2)))
    with pytest.raises(ConfigError, match="sampler 'sjd' cannot drive a 'scale' model; samplers for it: ar"):
        S.sample(var, [0], sampler="sjd")


def test_sjd_through_pipeline_and_cli(tmp_path):
    import argen

    pipe = argen.load("shapes-llamagen")
    a = pipe.generate(["star", "ring"], sampler="sjd", seed=1, window=8)
    b = pipe.generate(["star", "ring"], sampler="sjd", seed=1, window=8)
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]
    r = subprocess.run([sys.executable, "-m", "argen", "generate", "-q", "--sampler", "sjd", "--window", "8",
                        "-o", "init=repeat-above", "--classes", "0", "1", "--out", str(tmp_path / "g.png")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["sampler"] == "sjd" and report["images"] == 2


def test_argen_bench_reports_samplers_against_ar(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "argen", "bench", "--samplers", "sjd:window=4,init=random",
                        "--repeats", "1", "-b", "1", "2", "--classes", "star", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "sjd:window=4,init=random" in r.stdout and "vs ar" in r.stdout
    report = json.loads(out.read_text())
    rows = {(x["sampler"], x["batch_size"]): x for x in report["results"]}
    assert set(rows) == {("ar", 1), ("sjd:window=4,init=random", 1), ("ar", 2), ("sjd:window=4,init=random", 2)}
    ar, sjd = rows[("ar", 1)], rows[("sjd:window=4,init=random", 1)]
    assert ar["forward_passes"] == 64 and ar["step_compression"] == 1.0 and ar["speedup_vs_baseline"] == 1.0
    assert sjd["forward_passes"] < 64 and sjd["step_compression"] == pytest.approx(64 / sjd["forward_passes"])
    assert len(sjd["accept_histogram"]) == 5 and sum(k * c for k, c in enumerate(sjd["accept_histogram"])) == 63
    assert sjd["options"] == {"window": 4, "init": "random"}
    assert sjd["slower_than_baseline"] == (sjd["speedup_vs_baseline"] < 1) and report["baseline"] == "ar"
    # the time of one pass: SJD's window-4 pass carries 4 tokens, so it costs more than AR's
    assert ar["pass_cost_vs_baseline"] == pytest.approx(1.0) and "ms/pass" in r.stdout
    assert sjd["ms_per_pass"] > 0
    assert sjd["pass_cost_vs_baseline"] == pytest.approx(sjd["ms_per_pass"] / ar["ms_per_pass"])
    assert sjd["ms_per_pass"] <= 1000 * sjd["latency_s_per_image"] * 1.01  # one pass is part of an image's time


def test_bench_bad_sampler_specs():
    from argen.bench import parse_sampler

    with pytest.raises(ConfigError, match="unknown sampler 'fast'.*available: ar, sjd"):
        parse_sampler("fast")
    with pytest.raises(ConfigError, match="must be key=value"):
        parse_sampler("sjd:window")
    assert parse_sampler("sjd:window=8,coupled=false") == ("sjd", {"window": 8, "coupled": False})


def test_sjd_on_a_text_conditioned_model_equals_ar_greedy():
    """t2i LlamaGen: caption features as the condition, the null caption for CFG, a multi-token prefix."""
    torch.manual_seed(0)
    cfg = LlamaGenConfig(dim=32, n_layer=2, n_head=2, vocab_size=16, block_size=16, model_type="t2i",
                         cls_token_num=3, caption_dim=8, class_dropout_prob=0.1)
    t2i = LlamaGen(cfg).eval()
    captions = torch.randn(2, 3, 8)
    ar, _ = S.sample(t2i, captions, greedy=True, cfg_scale=2.0)
    sjd, st = S.sample(t2i, captions, sampler="sjd", greedy=True, cfg_scale=2.0, window=6, seed=0)
    assert torch.equal(ar, sjd) and st.forward_passes <= 16
    a, _ = S.sample(t2i, captions, sampler="sjd", seed=1, window=1, cfg_scale=2.0, top_k=5)
    b, _ = S.sample(t2i, captions, seed=1, cfg_scale=2.0, top_k=5)
    assert torch.equal(a, b)


def test_draw_rows_inverse_cdf_matches_the_weights():
    from exactness import P_FAIL, _chi2_pvalue

    from argen.samplers.sjd import draw_rows

    w = torch.tensor([0.0, 3.0, 0.0, 1.0, 0.5, 0.0, 2.5, 0.0])  # unnormalised, zeros at both ends too
    rows = w.expand(200_000, -1)
    ids = draw_rows(rows, torch.Generator().manual_seed(0))
    counts = torch.bincount(ids, minlength=8)
    assert counts[w == 0].sum() == 0  # a zero weight is never drawn
    keep = w > 0
    assert _chi2_pvalue(counts[keep].double(), w[keep].double() / w.sum() * ids.numel()) > P_FAIL
    # batched shapes: one index per row of (B, K, V)
    assert draw_rows(torch.rand(3, 5, 8), None).shape == (3, 5)
    for bad in (torch.zeros(2, 8), torch.full((2, 8), float("nan"))):
        with pytest.raises(ArgenError, match="positive finite total"):
            draw_rows(bad, None)
