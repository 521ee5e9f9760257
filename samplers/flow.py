"""The noise -> token flow (DD1, arXiv 2412.17153, section 3): a deterministic sampler that draws exactly
what ``ar`` draws.

At each position the teacher's processed next-token distribution p (CFG, temperature, top-k, top-p as
``ar`` applies them) over the V code vectors c_i defines a flow from N(0, I) to the mixture of Diracs
sum_i p_i delta(c_i) along straight paths x_s = s c + (1 - s) eps (s: 0 noise -> 1 data). Its velocity
has a closed form, v(x, s) = (E[c | x_s = x] - x) / (1 - s), the posterior weights being
w_i ~ p_i exp(-|x - s c_i|^2 / (2 (1 - s)^2)). The flow transports N(0, I) to that mixture exactly, so the
code it maps a noise vector to is distributed as p: feeding the codes back to the teacher (KV cache, token
by token or scale by scale) samples the joint of plain AR, while one noise tensor fixes the whole
sequence (the (noise, tokens) pairs a DD student learns).

Integration. With z = x / (1 - s) and r = s / (1 - s) the ODE becomes dz/dr = E_w[c], a bounded velocity
(w_i ~ p_i exp(r z.c_i - r^2 |c_i|^2 / 2)), from z = eps at r = 0; classical RK4 over ``ode_steps`` steps
uniform in s on [0, 0.99] (r up to 99), then the posterior's argmax. There is no closed form: in one
dimension the map is the monotone (quantile) rearrangement of N(0, 1) onto p, but in C dimensions the
regions of noise that reach each code are curved and depend on every code; the integration is the map.
``tests/test_exactness.py`` holds the sampler to the enumerated joint (chi-square) at the default step
count; Euler steps (or 4 RK4 steps) fail it.
"""
from __future__ import annotations

import torch

from argen.errors import ConfigError
from argen.generators.protocol import ScaleGenerator, TokenGenerator
from argen.samplers.ar import StepCallback, token_by_token
from argen.samplers.logits import SamplingOptions, target_probs
from argen.samplers.rng import Rng, given_or_normal
from argen.samplers.scales import scale_by_scale
from argen.samplers.stats import SamplerStats

ODE_STEPS = 16
S_MAX = 0.99  # the last time of the grid: r = s / (1 - s) = 99


def posterior_logits(log_p: torch.Tensor, codes: torch.Tensor, z: torch.Tensor, r: float) -> torch.Tensor:
    """log w_i + const: log p_i + r z.c_i - r^2 |c_i|^2 / 2 for z (M, C), log p (M, V), codes (V, C)."""
    return log_p + r * (z @ codes.T) - 0.5 * r * r * codes.pow(2).sum(-1)


def _velocity(log_p: torch.Tensor, codes: torch.Tensor, z: torch.Tensor, r: float) -> torch.Tensor:
    return posterior_logits(log_p, codes, z, r).softmax(-1) @ codes


def flow_codes(probs: torch.Tensor, codes: torch.Tensor, noise: torch.Tensor,
               ode_steps: int = ODE_STEPS) -> torch.Tensor:
    """Code ids (M,) that noise vectors (M, C) flow to under the distributions ``probs`` (M, V) over the code
    vectors ``codes`` (V, C). Deterministic; float64 inside. A zero-probability code is never reached."""
    log_p = probs.double().log()
    book = codes.double()
    z = noise.double()
    grid = torch.linspace(0.0, S_MAX, ode_steps + 1, dtype=torch.float64)
    rs = (grid / (1 - grid)).tolist()
    for r0, r1 in zip(rs, rs[1:]):
        h, rm = r1 - r0, 0.5 * (r0 + r1)
        k1 = _velocity(log_p, book, z, r0)
        k2 = _velocity(log_p, book, z + 0.5 * h * k1, rm)
        k3 = _velocity(log_p, book, z + 0.5 * h * k2, rm)
        k4 = _velocity(log_p, book, z + h * k3, r1)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return posterior_logits(log_p, book, z, rs[-1]).argmax(-1)


def _check(ode_steps: int) -> None:
    if isinstance(ode_steps, bool) or not isinstance(ode_steps, int) or ode_steps < 1:
        raise ConfigError(f"ode_steps must be an integer >= 1, got {ode_steps!r}")


def sample_flow_tokens(
    model: TokenGenerator,
    cond: torch.Tensor,
    opts: SamplingOptions,
    rng: Rng,
    *,
    noise: torch.Tensor | None = None,
    ode_steps: int = ODE_STEPS,
    progress: bool = False,
    callback: StepCallback | None = None,
    callback_every: int = 16,
    compile: bool = False,
) -> tuple[torch.Tensor, SamplerStats]:
    """Token ids (B, N) as ``ar`` draws them, each the image of its noise vector (``noise`` (B, N, C) in the
    tokenizer's code space, or drawn from the seed) under the flow of its position's distribution."""
    _check(ode_steps)
    z = given_or_normal((cond.shape[0], model.seq_len, model.code_vectors.shape[1]), rng, noise, cond.device)
    codes = model.code_vectors

    def pick(i: int, logits: torch.Tensor) -> torch.Tensor:
        return flow_codes(target_probs(logits, opts), codes, z[:, i], ode_steps).to(logits.device)

    return token_by_token(model, cond, opts, pick, "flow", progress=progress, callback=callback,
                          callback_every=callback_every, compile=compile)


def sample_flow_scales(
    model: ScaleGenerator,
    cond: torch.Tensor,
    opts: SamplingOptions,
    rng: Rng,
    *,
    noise: torch.Tensor | None = None,
    ode_steps: int = ODE_STEPS,
    progress: bool = False,
    callback: StepCallback | None = None,
    callback_every: int = 1,
) -> tuple[torch.Tensor, SamplerStats]:
    """Flat codes (B, L) in scale order as ``ar`` draws them, each scale's tokens the images of their noise
    vectors (``noise`` (B, L, Cvae) in the VQ-VAE's code space, or drawn from the seed)."""
    _check(ode_steps)
    b = cond.shape[0]
    z = given_or_normal((b, model.seq_len, model.code_vectors.shape[1]), rng, noise, cond.device)
    codes = model.code_vectors
    starts = [0]
    for pn in model.patch_nums:
        starts.append(starts[-1] + pn * pn)

    def pick(si: int, logits: torch.Tensor) -> torch.Tensor:
        probs = target_probs(logits, opts)  # (B, n, V)
        eps = z[:, starts[si] : starts[si + 1]]
        ids = flow_codes(probs.reshape(-1, probs.shape[-1]), codes, eps.reshape(-1, eps.shape[-1]), ode_steps)
        return ids.view(b, -1).to(logits.device)

    return scale_by_scale(model, cond, opts, pick, "flow", None, more_smooth=False, progress=progress,
                          callback=callback, callback_every=callback_every)
