"""The compiled decode step (``compile=True``): the eager (and official) tokens for greedy and seeded
sampling, AR and SJD, one graph per (rows, window) whatever rows are dropped, reused across calls and
model copies, the pipeline / CLI switches, and clear errors. Runs torch.compile on the CPU: the tiny
fixture model, two graphs (AR: 4 rows x 1 token, SJD: 4 rows x 4 tokens), shared by every test. Device-agnostic:
scripts/gpu_check.sh runs this file with the fixtures on CUDA (CUDA graphs)."""
import contextlib
import os

import pytest
import torch

import argen.samplers as S
from argen.errors import ConfigError
from argen.generators import VAR, VARConfig
from argen.samplers.compiled import ParkedCache, check_compile_available, compiled_decoder

CLASSES = [3, 7]  # with CFG: 4 rows, the shape every test below compiles for


@pytest.fixture(scope="module", autouse=True)
def one_compile_thread():
    """On a 2-core runner inductor's compile worker pool costs more than it saves."""
    import torch._inductor.config

    small = (os.cpu_count() or 1) <= 4
    with torch._inductor.config.patch(compile_threads=1) if small else contextlib.nullcontext():
        yield


def graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_compiled_ar_gives_the_eager_and_official_tokens(gpt_tiny, gpt_io):
    labels = gpt_io["labels"].tolist()
    assert labels == CLASSES
    before = graphs()
    greedy, st = S.sample(gpt_tiny, labels, cfg_scale=4.0, greedy=True, compile=True)
    assert graphs() - before <= 1  # one graph (none when an earlier test compiled it)
    assert torch.equal(greedy, gpt_io["gen_greedy_cfg4"].long())
    assert st.forward_passes == 16
    compiled = graphs()
    cases = [
        dict(seed=0, cfg_scale=4.0, top_k=8, top_p=0.9),  # the official seeded run
        dict(seed=11, cfg_scale=2.0, temperature=0.7),
        dict(seed=12, cfg_scale=4.0, cfg_interval=4, top_k=16),  # unconditional rows parked after token 5
    ]
    for kw in cases:
        eager, _ = S.sample(gpt_tiny, labels, **kw)
        comp, _ = S.sample(gpt_tiny, labels, compile=True, **kw)
        assert torch.equal(comp, eager), kw
    if gpt_tiny.tok_embeddings.weight.device.type == "cpu":  # the official run drew from the CPU stream
        assert torch.equal(S.sample(gpt_tiny, labels, seed=0, cfg_scale=4.0, top_k=8, top_p=0.9, compile=True)[0],
                           gpt_io["gen_sampled_seed0_cfg4"].long())
    assert graphs() == compiled  # same shapes every call: no recompilation


def test_compiled_sjd_gives_the_eager_tokens(gpt_tiny, gpt_io, monkeypatch):
    labels = gpt_io["labels"].tolist()
    parked = []
    select = ParkedCache.select
    monkeypatch.setattr(ParkedCache, "select", lambda self, rows: (parked.append(rows.tolist()), select(self, rows)))
    greedy, _ = S.sample(gpt_tiny, labels, sampler="sjd", window=4, cfg_scale=4.0, greedy=True, compile=True)
    assert torch.equal(greedy, gpt_io["gen_greedy_cfg4"].long())
    compiled = graphs()
    for kw in (dict(seed=5, cfg_scale=4.0, top_k=8), dict(seed=6, cfg_scale=4.0, ragged=False, init="random")):
        eager, se = S.sample(gpt_tiny, labels, sampler="sjd", window=4, **kw)
        comp, sc = S.sample(gpt_tiny, labels, sampler="sjd", window=4, compile=True, **kw)
        assert torch.equal(comp, eager), kw
        assert sc.forward_passes == se.forward_passes and sc.accept_histogram == se.accept_histogram
    assert graphs() == compiled
    assert parked, "no sample finished before the other: the parking path went untested"


def test_compile_through_pipeline_and_cli(tiny_pipe, tmp_path):
    from argen.cli import main

    eager = tiny_pipe.generate(CLASSES, seed=3, output_type="codes")
    compiled = graphs()
    comp = tiny_pipe.generate(CLASSES, seed=3, output_type="codes", compile=True)  # a deep copy of gpt_tiny
    assert torch.equal(comp, eager)
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "grid.png"
    args = ["generate", "-q", "--model", str(tmp_path / "pipe"), "--classes", "3", "7", "--seed", "3",
            "--compile", "--device", str(tiny_pipe.device), "--out", str(out)]
    assert main(args) == 0 and out.is_file()
    assert graphs() == compiled  # the copy and the reloaded model reuse the graph


def test_compiled_cache_pool_lends_one_cache_at_a_time(gpt_tiny):
    dec = compiled_decoder(gpt_tiny)
    assert compiled_decoder(gpt_tiny) is dec
    a = dec.new_cache(4)
    b = dec.new_cache(4)
    assert a.base is not b.base  # a is still in use: b gets its own buffers
    base = a.base
    del a
    c = dec.new_cache(4)
    assert c.base is base and c.lengths.tolist() == [0, 0, 0, 0]
    c.select(torch.tensor([1, 3]))
    c.truncate(torch.tensor([0, 0]))
    assert c.batch_size == 2 and c.base.batch_size == 4


def test_compile_errors(gpt_tiny, monkeypatch):
    for bad in ("yes", 1):
        with pytest.raises(ConfigError, match="compile must be true or false"):
            S.sample(gpt_tiny, [0], compile=bad)
    var = VAR(VARConfig(depth=2, embed_dim=32, num_heads=2, vocab_size=16, Cvae=4, num_classes=3, patch_nums=(1, 2)))
    with pytest.raises(ConfigError, match="unknown option.*compile"):
        S.sample(var, [0], compile=True)
    with pytest.raises(ConfigError, match="fixed-shape decode step of token-wise generators.*VAR is 'scale'-wise"):
        compiled_decoder(var)

    import torch._inductor.cpp_builder as cpp_builder
    from torch._inductor.exc import InvalidCxxCompiler

    def no_compiler():
        raise InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        check_compile_available(torch.device("cpu"))


def test_decode_at_equals_decode_on_ragged_rows(gpt_tiny):
    """The fixed-shape step (whole cache, position mask) gives decode's logits, rows at any length."""
    dev = gpt_tiny.tok_embeddings.weight.device
    tokens = torch.randint(0, 64, (3, 8), generator=torch.Generator().manual_seed(0)).to(dev)
    classes = torch.tensor([1, 2, 10], device=dev)
    with torch.no_grad():
        ref, fixed = gpt_tiny.new_cache(3), gpt_tiny.new_cache(3)
        for cache in (ref, fixed):
            gpt_tiny.prefill(classes, cache)
            gpt_tiny.decode(tokens[:, :5], cache)
            cache.truncate(torch.tensor([2, 6, 4], device=dev))
        window = tokens[:, 5:8]
        want = gpt_tiny.decode(window, ref)
        positions = fixed.next_positions(3)
        got = gpt_tiny.decode_at(window, positions, fixed)
        fixed.advance(3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert positions.tolist() == [[2, 3, 4], [6, 7, 8], [4, 5, 6]] and fixed.lengths.tolist() == [5, 9, 7]
    rows = torch.tensor([0, 2], device=dev)
    assert fixed.next_positions(2, rows).tolist() == [[5, 6], [7, 8]]
    fixed.advance(2, rows)
    assert fixed.lengths.tolist() == [7, 9, 9]
    with pytest.raises(ConfigError, match="KV cache overflow: need 18 positions, cache holds 17"):
        fixed.next_positions(9)


def test_compiled_decoding_drives_a_pixel_model():
    """image-GPT joins as a token-wise model: the compiled step gives its eager greedy pixels."""
    from conftest import tiny_igpt

    torch.manual_seed(0)
    gen, _ = tiny_igpt(num_classes=0, side=4)
    eager, _ = S.sample(gen, [0, 0], greedy=True)
    compiled, st = S.sample(gen, [0, 0], greedy=True, compile=True)
    assert torch.equal(compiled, eager) and st.forward_passes == 16


def test_compiled_decoding_drives_sub_token_heads():
    """ELM's positions of 2 sub-tokens: compiled ar gives the official seeded ids, compiled sjd its eager ids."""
    from conftest import fixture_io, tiny_elm

    gen, _ = tiny_elm()
    io = fixture_io("elm_lm_tiny")
    opts = dict(cfg_scale=4.0, top_k=10)  # sample.py's defaults, the fixture's seed-0 run
    compiled, _ = S.sample(gen, io["labels"], generator=torch.Generator().manual_seed(0), compile=True, **opts)
    assert torch.equal(compiled, io["gen_sampled_seed0_sample_py_defaults.ids"])
    runs = [S.sample(gen, io["labels"], sampler="sjd", window=4, generator=torch.Generator().manual_seed(1),
                     compile=c, **opts)[0] for c in (True, False)]
    assert torch.equal(*runs)
