"""The mask sampler (MaskGIT-style parallel decoding, kind "masked"): its schedule, determinism, filters,
option errors, an end-to-end run on a tiny ELM MLM, per-image streams, and the distribution it draws from,
on a toy model whose logits ignore the context (chi-square as tests/exactness.py)."""
from __future__ import annotations

import pytest
import torch
from exactness import P_FAIL, _chi2_pvalue

import argen.samplers as S
from argen.errors import ConfigError
from argen.generators.elm_mlm import ElmMLM, ElmMLMConfig
from argen.samplers.logits import SamplingOptions, split_guided, token_probs
from argen.samplers.mar import mask_lengths
from argen.samplers.rng import RowStreams

pytestmark = pytest.mark.usefixtures("one_thread")


class TableMasked(torch.nn.Module):
    """A "masked" generator whose logits are a seeded table per (class, position): the context is ignored."""

    kind = "masked"
    sampling_conventions: dict[str, str] = {}

    def __init__(self, n: int = 4, shape: tuple[int, ...] = (2,), vocab: int = 5, num_classes: int = 2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.seq_len, self.token_shape, self.vocab_size, self.num_classes = n, shape, vocab, num_classes
        self.token_grid = (1, n)
        self.register_buffer("table", torch.randn(num_classes + 1, n, *shape, vocab, generator=g) * 1.5)
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[torch.Tensor] = []

    def null_condition(self, b: int) -> torch.Tensor:
        return torch.full((b,), self.num_classes, dtype=torch.long)

    def check_condition(self, classes, allow_null: bool = False) -> torch.Tensor:
        return torch.as_tensor(classes, dtype=torch.long)

    def masked_logits(self, tokens: torch.Tensor, masked: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.calls.append(masked.clone())
        return self.table[cond].clone()


def _processed(model: TableMasked, cls: int, opts: SamplingOptions) -> torch.Tensor:
    """(N, *token_shape, V) the distribution every draw comes from (constant guidance)."""
    logits = torch.stack([model.table[cls], model.table[model.num_classes]])
    if opts.guided:
        logits = split_guided(logits, opts.scale_at(0, 1))[0]
    else:
        logits = logits[0]
    return token_probs(logits.reshape(-1, model.vocab_size), opts).view(logits.shape).double()


@pytest.fixture(scope="module")
def mlm() -> ElmMLM:
    torch.manual_seed(0)
    model = ElmMLM(ElmMLMConfig(dim=32, n_layer=2, n_head=4, token_each=2, code_dim=4, block_size=16,
                                num_classes=5)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("n", [1, 2, 7, 16, 256])
def test_schedule_fixes_at_least_one_position_per_step_and_all_by_the_end(n):
    for k in range(1, n + 1):
        lefts = mask_lengths(n, k)
        fixed = [a - b for a, b in zip([n, *lefts[:-1]], lefts[:-1])] + [lefts[-2] if k > 1 else n]
        assert sum(fixed) == n and min(fixed) >= 1, (n, k, fixed)


def test_steps_follow_the_cosine_schedule_and_fixed_positions_stay(mlm):
    seen: list[torch.Tensor] = []
    codes, stats = S.sample(mlm, [0, 3], sampler="mask", seed=0, cfg_scale=2.0, num_iter=5,
                            callback=lambda step, c: seen.append(c.clone()))
    lefts = mask_lengths(16, 5)
    assert stats.accepted_history == [16 - lefts[0], *(a - b for a, b in zip(lefts, lefts[1:-1])), lefts[-2]]
    assert stats.forward_passes == 5 and stats.guided_rows == 4 and stats.sampler == "mask"
    assert stats.tokens_per_pass == 16 / 5 and torch.equal(seen[-1], codes)
    # official 16-position cosine schedule with 5 steps: 1, 3, 3, 5, 4 positions fixed
    assert stats.accepted_history == [1, 3, 3, 5, 4]
    for before, after in zip(seen, seen[1:]):  # a position known after a step keeps its code
        known = (before != 0).any(-1)
        assert torch.equal(after[known], before[known])


def test_end_to_end_on_a_tiny_mlm_is_seeded(mlm):
    a, st = S.sample(mlm, [0, 1], sampler="mask", seed=0, cfg_scale=2.0, num_iter=4)
    b, _ = S.sample(mlm, [0, 1], sampler="mask", seed=0, cfg_scale=2.0, num_iter=4)
    c, _ = S.sample(mlm, [0, 1], sampler="mask", seed=1, cfg_scale=2.0, num_iter=4)
    assert a.shape == (2, 16, 2) and a.dtype == torch.int64 and 0 <= int(a.min()) and int(a.max()) < 16
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert st.seed == 0 and st.forward_passes == 4 and st.guided_rows == 4
    assert S.default_sampler(mlm) == "mask" and S.samplers_for(mlm) == ["mask"]
    # linear guidance and the default step count run too
    d, sd = S.sample(mlm, [2], seed=0, cfg_scale=3.0, cfg_schedule="linear", top_k=4)
    assert d.shape == (1, 16, 2) and sd.forward_passes == 10


def test_per_image_streams_make_images_independent_of_the_batch():
    model = TableMasked(n=6)
    whole, _ = S.sample(model, [0, 1, 0], sampler="mask", generator=RowStreams.from_seed(3, 0, 3, "cpu"),
                        num_iter=3, cfg_scale=2.0)
    for i in range(3):
        one, _ = S.sample(model, [[0, 1, 0][i]], sampler="mask", generator=RowStreams.from_seed(3, i, 1, "cpu"),
                          num_iter=3, cfg_scale=2.0)
        assert torch.equal(one[0], whole[i])
    assert S.takes_row_streams("mask", model)


def test_draws_stay_in_the_top_k_set():
    model = TableMasked(n=6, vocab=9)
    codes, _ = S.sample(model, [1] * 500, sampler="mask", seed=0, num_iter=3, cfg_scale=2.5, top_k=3)
    allowed = _processed(model, 1, SamplingOptions(cfg_scale=2.5, top_k=3)) > 0  # (N, G, V)
    assert int(allowed.sum(-1).max()) == 3
    assert bool(allowed.expand(500, -1, -1, -1).gather(-1, codes.unsqueeze(-1)).all())


def test_bad_options_are_one_line_config_errors(mlm):
    for opts, msg in [(dict(num_iter=0), r"num_iter must be an integer in \[1, 16\]"),
                      (dict(num_iter=17), r"num_iter must be an integer in \[1, 16\]"),
                      (dict(num_iter=2.0), "num_iter must be an integer"),
                      (dict(num_iter=True), "num_iter must be an integer"),
                      (dict(choice_temperature=-1.0), "choice_temperature must be a finite number >= 0"),
                      (dict(choice_temperature=float("nan")), "choice_temperature must be a finite number"),
                      (dict(order="raster"), "unknown option.*for sampler 'mask'")]:
        with pytest.raises(ConfigError, match=msg) as err:
            S.sample(mlm, [0], sampler="mask", seed=0, **opts)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="sampler 'ar' cannot drive a 'masked' model"):
        S.sample(mlm, [0], sampler="ar", seed=0)


def _marginal_pvalue(codes: torch.Tensor, probs: torch.Tensor) -> float:
    """Smallest chi-square p-value over the positions' joint of their sub-tokens (independent by design)."""
    n, g, v = probs.shape
    worst = 1.0
    for i in range(n):
        joint = probs[i, 0][:, None] * probs[i, 1][None, :]  # (V, V), g == 2
        observed = torch.bincount(codes[:, i, 0] * v + codes[:, i, 1], minlength=v * v).double()
        worst = min(worst, _chi2_pvalue(observed, joint.flatten() * codes.shape[0]))
    return worst


@pytest.mark.parametrize("num_iter,choice_t,exact", [(1, 1.0, True), (4, 1e6, True), (4, 0.0, False)])
def test_marginals_are_the_processed_distribution_where_the_selection_ignores_the_draws(num_iter, choice_t, exact):
    """Every draw comes from the processed distribution, but the kept one is the one confident enough: with
    one step, or noise that swamps log p, the marginals are exact; with noise-free confidence (a negative
    control) likely codes are kept more often and the test must fail."""
    model = TableMasked(n=4, shape=(2,), vocab=5)
    opts = dict(cfg_scale=2.0, top_k=4, temperature=1.3)
    codes, _ = S.sample(model, [0] * 20_000, sampler="mask", seed=0, num_iter=num_iter,
                        choice_temperature=choice_t, **opts)
    p = _marginal_pvalue(codes, _processed(model, 0, SamplingOptions(**opts)))
    assert (p >= P_FAIL) == exact, p
