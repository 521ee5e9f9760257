"""The noise -> token flow (argen.samplers.flow) on real generators: deterministic given the noise, greedy
equal to ar, the map exact on a codebook like LlamaGen's (the joint over a sequence: tests/test_exactness.py)."""
from __future__ import annotations

import pytest
import torch
from conftest import TINY_PIPELINES
from exactness import _chi2_pvalue

import argen.samplers as S
from argen.errors import ConfigError
from argen.pipeline import ARPipeline
from argen.samplers.flow import flow_codes


@pytest.fixture(scope="module", params=["llamagen", "var"])
def pipe(request):
    gen, tok, opts = TINY_PIPELINES[request.param]()
    return ARPipeline(gen, tok, defaults=opts)


def test_the_map_is_exact_on_a_normalised_codebook():
    """64 unit codes in 8 dimensions (LlamaGen's code space is the unit sphere in 8-d), a peaked p: the codes
    that 100k noise vectors flow to are distributed as p (chi-square)."""
    g = torch.Generator().manual_seed(72)
    codes = torch.nn.functional.normalize(torch.randn(64, 8, generator=g), dim=-1)
    p = torch.softmax(torch.randn(64, generator=g) * 2, -1)
    n = 100_000
    ids = flow_codes(p.expand(n, -1), codes, torch.randn(n, 8, generator=g))
    observed = torch.bincount(ids, minlength=64).double()
    assert _chi2_pvalue(observed, p.double() * n) > 1e-4


def test_noise_fixes_the_codes(pipe):
    gen = pipe.generator
    noise = torch.randn(2, gen.seq_len, gen.code_vectors.shape[1], generator=torch.Generator().manual_seed(0))
    a, stats = S.sample(gen, [1, 2], sampler="flow", noise=noise, seed=0)
    assert stats.sampler == "flow" and a.shape == (2, gen.seq_len)
    assert torch.equal(a, S.sample(gen, [1, 2], sampler="flow", noise=noise, seed=99)[0])  # the seed is unused
    assert not torch.equal(a, S.sample(gen, [1, 2], sampler="flow", noise=-noise)[0])
    assert torch.equal(pipe.generate([1, 2], seed=4, sampler="flow", output_type="codes"),
                       pipe.generate([1, 2], seed=4, sampler="flow", output_type="codes"))


def test_greedy_flow_is_greedy_ar(pipe):
    """A one-hot p leaves the flow one place to go, whatever the noise."""
    gen = pipe.generator
    ar = S.sample(gen, [1, 2, 3], sampler="ar", greedy=True, cfg_scale=1.5)[0]
    assert torch.equal(S.sample(gen, [1, 2, 3], sampler="flow", greedy=True, cfg_scale=1.5, seed=7)[0], ar)


def test_bad_options(pipe):
    gen = pipe.generator
    with pytest.raises(ConfigError, match=r"noise must be a float tensor \(1, "):
        S.sample(gen, [1], sampler="flow", noise=torch.zeros(1, 3, 2))
    with pytest.raises(ConfigError, match="ode_steps must be an integer >= 1"):
        S.sample(gen, [1], sampler="flow", ode_steps=0)


def test_a_generator_without_its_tokenizer_says_so():
    gen, _, _ = TINY_PIPELINES["llamagen"]()
    with pytest.raises(ConfigError, match="no VQ tokenizer bound"):
        S.sample(gen, [1], sampler="flow")
