"""Samplers preserve the target distribution: chi-square / TV against an enumerated joint (see
tests/exactness.py), and the same test fails for each known way of getting speculative sampling wrong."""
import pytest
import torch
from exactness import TableModel, run, tv_of

import argen.samplers.flow as flow
import argen.samplers.sjd as sjd
from argen.samplers.logits import top_p_filter

MODEL = TableModel(vocab=5, length=4, grid=(2, 2))

CONFIGS = {
    "plain": {},
    "cfg": dict(cfg_scale=2.5),
    "cfg-topk": dict(cfg_scale=2.0, top_k=3),
    "topp-temp": dict(top_p=0.8, temperature=0.7),
    "cfg-linear-interval": dict(cfg_scale=3.0, cfg_schedule="linear", cfg_interval=1),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ar_is_exact(name):
    v = run(MODEL, "ar", **CONFIGS[name])
    assert v.passed, tv_of(v)


# every config and every draft init, windows shorter and longer than the sequence
SJD_RUNS = [
    ("plain", "repeat-left", 4), ("plain", "repeat-above", 3), ("cfg", "random", 3), ("cfg", "repeat-left", 16),
    ("cfg-topk", "repeat-above", 8), ("topp-temp", "repeat-left", 4), ("cfg-linear-interval", "random", 5),
]


@pytest.mark.parametrize("name,init,window", SJD_RUNS)
def test_sjd_is_exact_ragged_batch(name, init, window):
    v = run(MODEL, "sjd", window=window, init=init, seed=1, **CONFIGS[name])
    assert v.passed, tv_of(v)


@pytest.mark.parametrize("name", ["plain", "cfg-topk"])
def test_original_sjd_without_coupling_is_exact(name):
    v = run(MODEL, "sjd", window=4, init="repeat-left", coupled=False, seed=5, **CONFIGS[name])
    assert v.passed, tv_of(v)


@pytest.mark.parametrize("name", ["plain", "cfg-topk"])
def test_sjd_is_exact_with_batch_minimum_advance(name):
    v = run(MODEL, "sjd", window=4, init="random", ragged=False, seed=2, **CONFIGS[name])
    assert v.passed, tv_of(v)


def test_sjd_is_exact_at_batch_1():
    # one sample per call: fewer samples (each call is a full generation), so a coarser but still
    # exact check of the joint and its marginals
    v = run(MODEL, "sjd", n=1500, batch=1, window=4, init="random", cfg_scale=2.0, seed=3)
    assert v.passed, tv_of(v)


def _rewarped(top_p):
    exact = sjd.residual_weights

    def residual(p, q):  # the official code's way: the logit processors once more on the residual
        w = exact(p, q)
        return top_p_filter((w / w.sum(-1, keepdim=True)).log(), top_p).softmax(-1)
    return residual


NEGATIVE = {
    "always-accept": ("accept_mask", lambda p, q, r: torch.ones_like(p, dtype=torch.bool), {}),
    "residual-is-p": ("residual_weights", lambda p, q: p, {}),
    "no-stop-at-first-rejection": ("accepted_prefix", lambda ok: ok.long().sum(1), {}),
    "rewarped-residual": ("residual_weights", _rewarped(0.8), dict(top_p=0.8)),
    "batch-minimum-retest": ("kept_draft_probs", lambda p_kept, q_old: q_old, dict(ragged=False)),
    "coupling-redraws-from-p": ("coupling_weights", lambda p, q: p, {}),
}


@pytest.mark.parametrize("name", list(NEGATIVE))
def test_broken_speculative_samplers_fail_the_same_test(name, monkeypatch):
    fn, broken, options = NEGATIVE[name]
    monkeypatch.setattr(sjd, fn, broken)
    v = run(MODEL, "sjd", window=4, init="random", seed=4, **options)
    assert not v.passed, f"{name} passed the exactness test: {tv_of(v)}"


# the noise -> token flow (argen.samplers.flow): deterministic given the noise, distributed as ar
FLOW_RUNS = ["plain", "cfg-topk", "topp-temp"]


@pytest.mark.parametrize("name", FLOW_RUNS)
def test_flow_is_exact(name):
    v = run(MODEL, "flow", seed=6, **CONFIGS[name])
    assert v.passed, tv_of(v)


FLOW_NEGATIVE = {
    # the teacher's raw distribution instead of the processed one (CFG, top-k) that ar draws from
    "unprocessed-probs": (lambda monkeypatch: monkeypatch.setattr(flow, "target_probs",
                                                                  lambda logits, opts: logits.float().softmax(-1)),
                          dict(cfg_scale=2.0, top_k=3)),
    # too coarse an integration of the ODE (16 RK4 steps pass; 8 pass here too, 4 do not)
    "four-rk4-steps": (lambda monkeypatch: None, dict(ode_steps=4)),
}


@pytest.mark.parametrize("name", list(FLOW_NEGATIVE))
def test_broken_flows_fail_the_same_test(name, monkeypatch):
    patch, options = FLOW_NEGATIVE[name]
    patch(monkeypatch)
    v = run(MODEL, "flow", seed=6, **options)
    assert not v.passed, f"{name} passed the exactness test: {tv_of(v)}"


# sub-token models (ELM's split vocabulary): two heads of 3 sub-tokens per position, the joint over the
# 9 combined codes; SJD verifies a position by the product of its heads' probabilities
SPLIT = TableModel(vocab=3, length=3, grid=(1, 3), heads=2, seed=7)
SPLIT_CONFIGS = {**CONFIGS, "cfg-topk": dict(cfg_scale=2.0, top_k=2),
                 "cfg-cos": dict(cfg_scale=3.0, cfg_schedule="cos")}


@pytest.mark.parametrize("name", ["plain", "cfg-topk", "cfg-cos"])
def test_ar_is_exact_over_sub_tokens(name):
    v = run(SPLIT, "ar", seed=8, **SPLIT_CONFIGS[name])
    assert v.passed, tv_of(v)


SPLIT_SJD_RUNS = [("plain", "repeat-left", 3), ("cfg-topk", "random", 4), ("topp-temp", "repeat-above", 2),
                  ("cfg-cos", "random", 8)]


@pytest.mark.parametrize("name,init,window", SPLIT_SJD_RUNS)
def test_sjd_is_exact_over_sub_tokens(name, init, window):
    v = run(SPLIT, "sjd", n=100_000, window=window, init=init, seed=9, **SPLIT_CONFIGS[name])
    assert v.passed, tv_of(v)


def test_sjd_over_sub_tokens_is_exact_uncoupled_and_with_batch_minimum_advance():
    for options in (dict(coupled=False), dict(ragged=False)):
        v = run(SPLIT, "sjd", n=100_000, window=3, init="random", seed=10, cfg_scale=2.0, **options)
        assert v.passed, f"{options}: {tv_of(v)}"


def _per_head_residual(p, q, rng, **_):
    """The tempting shortcut: each head from its own max(0, p_g - q_g), which is not the joint's residual."""
    return sjd.draw_rows(sjd.residual_weights(p, q), rng)


SPLIT_NEGATIVE = {
    "per-head-residual": ("joint_residual", _per_head_residual),
    "joint-residual-is-p": ("joint_residual", lambda p, q, rng, **_: sjd.draw_rows(p, rng)),
    "first-head-only-verified": ("joint_prob", lambda p, ids: p.gather(-1, ids[..., None]).squeeze(-1)[..., 0]),
}


@pytest.mark.parametrize("name", list(SPLIT_NEGATIVE))
def test_broken_sub_token_speculation_fails_the_same_test(name, monkeypatch):
    fn, broken = SPLIT_NEGATIVE[name]
    monkeypatch.setattr(sjd, fn, broken)
    v = run(SPLIT, "sjd", window=3, init="random", seed=11)
    assert not v.passed, f"{name} passed the exactness test: {tv_of(v)}"


def test_the_joint_residual_is_exact_where_rejection_gives_up():
    """The enumerated fallback (rows left after every round of candidates) draws max(0, P - Q) too."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(2, 3, generator=g), -1)[None].expand(20000, -1, -1)
    q = torch.softmax(torch.randn(2, 3, generator=g), -1)[None].expand(20000, -1, -1)
    joint_p = (p[0, 0][:, None] * p[0, 1][None]).flatten().double()
    joint_q = (q[0, 0][:, None] * q[0, 1][None]).flatten().double()
    want = (joint_p - joint_q).clamp(min=0)
    want /= want.sum()
    for rounds in (64, 0):  # rejection; the enumeration alone
        ids = sjd.joint_residual(p, q, g, rounds=rounds) if rounds else torch.stack(
            [sjd._enumerated_residual(p[i], q[i], g) for i in range(2000)])
        freq = torch.bincount(ids[:, 0] * 3 + ids[:, 1], minlength=9).double() / ids.shape[0]
        assert (freq - want).abs().max() < 0.03, (rounds, freq, want)
        assert freq[want == 0].sum() == 0
