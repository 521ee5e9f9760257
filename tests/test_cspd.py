"""Continuous speculative decoding: the exact variant keeps plain ar's distribution (two-sample tests, and
four broken variants that the same tests catch), the Gaussian verification step against its closed
form, the official variant's outcome, MAR's ragged verification pass, and bad input."""
import math

import pytest
import torch
from conftest import fixture_config, fixture_weights
from continuous_exactness import ToyMAR, ks_pvalue, two_sample

import argen.samplers as S
import argen.samplers.cspd as cspd
from argen.errors import ConfigError
from argen.generators import MAR, MARConfig
from argen.samplers.gaussian_spec import Gaussian, accept, acceptance_rate, residual

N = 20_000  # samples a side
TOY = dict(cfg_scale=2.0, num_iter=4)


def toy_samples(model, sampler: str, seed: int, n: int = N, **options) -> torch.Tensor:
    codes, _ = S.sample(model, [1] * n, sampler=sampler, seed=seed, **{**TOY, **options})
    return codes


@pytest.fixture(scope="module")
def toy():
    """Target, draft (46% of tokens accepted), and the target's plain-ar samples (final step drawn)."""
    target, draft = ToyMAR(), ToyMAR(shift=0.05)
    return target, draft, toy_samples(target, "ar", seed=1, final_noise=True)


# -- the verification step ------------------------------------------------------------------------------------
@pytest.mark.parametrize("gap", [0.0, 0.3, 1.0, 2.5])
def test_acceptance_rate_is_one_minus_tv_and_output_follows_p(gap):
    n, sigma = 200_000, 0.7
    g = torch.Generator().manual_seed(0)
    p = Gaussian(torch.zeros(n, 1, dtype=torch.float64), torch.full((n, 1), math.log(sigma), dtype=torch.float64))
    q = Gaussian(p.mean + gap, p.log_std)
    x = q.draw(torch.randn(n, 1, generator=g, dtype=torch.float64))
    ok = accept(x, p, q, g)
    expected = float(acceptance_rate(p, q)[0])
    assert abs(float(ok.double().mean()) - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-9
    out = x.clone()
    if not bool(ok.all()):
        draws, fallbacks = residual(Gaussian(p.mean[~ok], p.log_std[~ok]), Gaussian(q.mean[~ok], q.log_std[~ok]), g)
        out[~ok] = draws
        assert fallbacks == 0
    reference = p.draw(torch.randn(n, 1, generator=g, dtype=torch.float64))
    assert ks_pvalue(out[:, 0], reference[:, 0]) > 1e-4
    # the residual draws alone follow (p - q)+, not p: their mean is the residual's (numerical integral)
    if gap > 0:
        grid = torch.linspace(-8, 8, 160_001, dtype=torch.float64)[:, None]
        dens = (torch.exp(Gaussian(grid * 0, grid * 0 + math.log(sigma)).log_density(grid))
                - torch.exp(Gaussian(grid * 0 + gap, grid * 0 + math.log(sigma)).log_density(grid))).clamp(min=0)
        mean = float((dens * grid[:, 0]).sum() / dens.sum())
        res = out[~ok][:, 0]
        assert abs(float(res.mean()) - mean) < 4 * float(res.std()) / math.sqrt(res.numel())
        assert mean < -0.05


# -- exactness on the toy MAR -----------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    dict(gamma=2, prefill=0.0),
    dict(gamma=3, prefill=0.25, cfg_scale=1.0, temperature=0.8, adaptive=False),
])
def test_exact_cspd_samples_what_ar_samples(toy, options):
    target, draft, _ = toy
    plain = {k: v for k, v in options.items() if k in ("cfg_scale", "temperature")}
    reference = toy_samples(target, "ar", seed=11, final_noise=True, **plain)
    codes, stats = S.sample(target, [1] * N, sampler="cspd", draft=draft, seed=12, **{**TOY, **options})
    verdict = two_sample(reference, codes)
    assert verdict.passed, str(verdict)
    d = stats.as_dict()
    assert 0.2 < d["token_acceptance"] < 0.9  # drafts are kept and rejected: both paths are exercised
    assert stats.forward_passes <= TOY["num_iter"]


def _always_accept(x, p, q, rng):
    return torch.ones(x.shape[0], dtype=torch.bool)


def _residual_is_p(p, q, rng, max_tries):
    return p.draw(torch.randn(p.mean.shape, generator=rng, dtype=p.mean.dtype)), 0


def _no_stop(first, drafted):
    return torch.where(first < drafted, drafted - 1, first)  # keep every drafted step, corrected


@pytest.mark.parametrize("name, patch", [("always accept", ("accept", _always_accept)),
                                         ("residual = p, no (1 - q/p)+ thinning", ("residual", _residual_is_p)),
                                         ("no stop after a rejected step", ("_stop_step", _no_stop)),
                                         ("the draft alone", None)])
def test_broken_variants_fail_the_same_test(toy, monkeypatch, name, patch):
    target, draft, reference = toy
    if patch is None:
        codes = toy_samples(draft, "ar", seed=3, final_noise=True)
    else:
        monkeypatch.setattr(cspd, *patch)
        codes = toy_samples(target, "cspd", seed=3, draft=draft, gamma=2, prefill=0.0)
    verdict = two_sample(reference, codes)
    assert not verdict.passed, f"{name} passed: {verdict}"


def test_official_variant_runs_and_fails_both_targets(toy):
    """MarkXCloud/CSpD's procedure on the toy: its heuristic keeps ~99% of drafts (draft means), so it
    samples neither the target at the fine schedule nor at the gamma-coarse one (reported in the
    closing note of issue 32)."""
    target, draft, _ = toy
    codes, stats = S.sample(target, [1] * N, sampler="cspd", draft=draft, seed=5, gamma=2, prefill=0.0,
                            variant="official", **TOY)
    assert stats.as_dict()["token_acceptance"] > 0.9
    fine = toy_samples(target, "ar", seed=6)
    coarse = toy_samples(target, "ar", seed=7, schedule=cspd.coarse_schedule(4, 4, 2, 0.0))
    assert not two_sample(fine, codes).passed
    assert not two_sample(coarse, codes).passed


def test_coarse_schedule_merges_each_verified_chunk():
    fine = S.mar.mask_lengths(64, 64)
    coarse = cspd.coarse_schedule(64, 64, 4, 0.15)
    assert coarse[:10] == fine[:10]  # steps 0..9: 9 <= 0.15 * 64 = 9.6
    assert coarse[10:] == [fine[k] for k in range(10, 64) if k % 4 == 0 or k == 63]
    assert cspd.prefill_steps(64, 0.0) == 1 and cspd.prefill_steps(4, 0.99) == 4


# -- on a real MAR --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mar_tiny():
    """The official tiny MAR in float64: its random-init chain ends at tokens ~1e4 (the cosine chain's
    first steps amplify epsilon), where float32 rounding alone moves two identical chains apart."""
    model = MAR(MARConfig(**fixture_config("mar_tiny")))
    model.load_state_dict(fixture_weights("mar_tiny"), strict=True)
    return model.double().eval()


def test_ragged_conditions_equal_each_row_alone(mar_tiny):
    g = torch.Generator().manual_seed(0)
    b, n = 3, mar_tiny.seq_len
    tokens = torch.randn(b, n, mar_tiny.token_dim, generator=g, dtype=torch.float64)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for row, known in enumerate((3, 9, 14)):
        mask[row, torch.randperm(n, generator=g)[known:]] = True
    emb = mar_tiny.class_embedding(torch.tensor([1, 2, 3]))
    with torch.no_grad():
        together = mar_tiny.conditions(tokens, mask, emb)
        for row in range(b):
            alone = mar_tiny.conditions(tokens[row:row + 1], mask[row:row + 1], emb[row:row + 1])
            torch.testing.assert_close(together[row:row + 1], alone, atol=1e-10, rtol=1e-9)


def test_identical_draft_is_always_accepted_and_samples_ar(mar_tiny):
    opts = dict(cfg_scale=3.0, num_iter=6, diffusion_steps=5)
    n = 600
    reference, _ = S.sample(mar_tiny, [2] * n, sampler="ar", seed=1, final_noise=True, **opts)
    codes, stats = S.sample(mar_tiny, [2] * n, sampler="cspd", draft=mar_tiny, seed=2, gamma=3, prefill=0.0, **opts)
    d = stats.as_dict()
    assert d["token_acceptance"] > 0.999 and d["residual_fallbacks"] == 0
    # 6 steps: the prefill step, then one round of 3 drafted steps + the bonus, then the last step
    assert stats.forward_passes == 3 and stats.draft_passes == 4
    verdict = two_sample(reference, codes)
    assert verdict.passed, str(verdict)


@pytest.mark.parametrize("schedule", [[5, 7], [16], [3, 0], [], [4.5]])
def test_a_bad_explicit_schedule_is_a_one_line_error(mar_tiny, schedule):
    with pytest.raises(ConfigError, match="schedule must list, per step, the tokens left masked"):
        S.sample(mar_tiny, [1], sampler="ar", schedule=schedule)


def test_final_noise_draws_the_last_step(mar_tiny):
    a, _ = S.sample(mar_tiny, [1, 2], sampler="ar", seed=0, num_iter=4)
    b, _ = S.sample(mar_tiny, [1, 2], sampler="ar", seed=0, num_iter=4, final_noise=True)
    assert not torch.equal(a, b)
    c, _ = S.sample(mar_tiny, [1, 2], sampler="ar", seed=0, num_iter=4, final_noise=False)
    torch.testing.assert_close(a, c, atol=0, rtol=0)


# -- bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, match", [
    (dict(gamma=0), "gamma .* integer >= 1"),
    (dict(prefill=1.0), r"prefill .* \[0, 1\)"),
    (dict(prefill=-0.1), r"prefill .* \[0, 1\)"),
    (dict(variant="fast"), "unknown cspd variant 'fast'; known: exact, official"),
    (dict(top_k=5), "top_k does not apply"),
    (dict(top_p=0.9), "top_p does not apply"),
    (dict(temperature=0.0), "temperature > 0"),
    (dict(draft=None), "needs a draft model"),
])
def test_bad_options_are_one_line_errors(toy, options, match):
    target, draft, _ = toy
    with pytest.raises(ConfigError, match=match):
        S.sample(target, [1], sampler="cspd", **{"draft": draft, **options})


def test_a_draft_of_another_layout_or_family_is_refused(toy, mar_tiny):
    target, _, _ = toy
    other = ToyMAR()
    other.token_dim = 3
    with pytest.raises(ConfigError, match="the draft's token_dim is 3, the target's 2"):
        S.sample(target, [1], sampler="cspd", draft=other)
    with pytest.raises(ConfigError, match="the draft's seq_len is 16, the target's 4"):
        S.sample(target, [1], sampler="cspd", draft=mar_tiny)
    from exactness import TableModel
    with pytest.raises(ConfigError, match="continuous-token .* got a 'token' one"):
        S.sample(target, [1], sampler="cspd", draft=TableModel())


# -- through the pipeline, the CLI and the demo ---------------------------------------------------------------
DRAFT = "shapes-mar-draft"
FAST = dict(num_iter=8, diffusion_steps=10)


@pytest.fixture(scope="module")
def shapes_mar():
    import argen

    return argen.load("shapes-mar")


def test_pipeline_takes_the_draft_by_name_and_reports_acceptance(shapes_mar):
    images = shapes_mar.generate([0, 1], sampler="cspd", draft=DRAFT, seed=0, gamma=3, **FAST)
    assert len(images) == 2 and images[0].size == (64, 64)
    d = shapes_mar.last_stats.as_dict()
    assert d["sampler"] == "cspd" and d["draft_passes"] > 0 and 0.0 <= d["token_acceptance"] <= 1.0
    assert d["forward_passes"] <= FAST["num_iter"]


def test_a_draft_with_another_tokenizer_is_refused(shapes_mar):
    with pytest.raises(ConfigError, match="the draft's tokenizer is a VQTokenizer, the target's a KLVAE"):
        shapes_mar.generate([0], sampler="cspd", draft="shapes-llamagen", **FAST)


@pytest.mark.parametrize("flags, match", [
    (["--gamma", "0"], "gamma"), (["--prefill", "1"], "prefill"), (["--top-k", "5"], "top_k does not apply"),
    (["--draft", "shapes-var"], "tokenizer"), ([], "needs a draft model")])
def test_cli_bad_cspd_input_exits_2(flags, match, capsys, tmp_path):
    from argen.cli import main

    draft = [] if "--draft" in flags or not flags else ["--draft", DRAFT]
    code = main(["generate", "--model", "shapes-mar", "--sampler", "cspd", *draft, *flags, "--classes", "0", "-q",
                 "--out", str(tmp_path / "x.png")])
    assert code == 2 and match in capsys.readouterr().err


def test_cli_generates_with_a_draft(capsys, tmp_path):
    import json

    from argen.cli import main

    code = main(["generate", "--model", "shapes-mar", "--sampler", "cspd", "--draft", DRAFT, "--gamma", "2",
                 "--classes", "3", "--num-iter", "8", "--diffusion-steps", "10", "-q",
                 "--out", str(tmp_path / "g.png")])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["sampler"] == "cspd" and "token_acceptance" in report
    assert (tmp_path / "g.png").is_file()


def test_bench_reports_the_drafts_share(shapes_mar):
    from argen.bench import run_bench

    report = run_bench(shapes_mar, ["cspd:draft=shapes-mar-draft,gamma=2"], batch_sizes=[2], repeats=1,
                       sampling=FAST, warmup=False)
    base, spec = report["results"]
    assert base["sampler"] == "ar" and "draft_passes" not in base
    assert spec["draft_passes"] > 0 and 0.0 <= spec["token_acceptance"] <= 1.0 and spec["head_evaluations"] > 0
