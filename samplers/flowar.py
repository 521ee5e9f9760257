"""Scale-wise flow sampling for FlowAR: per scale one transformer pass (KV cache) gives the
conditions, then the flow head's ODE is integrated from noise (t = 1) to data (t = 0) with Euler steps.

Follows the official ``FlowAR.sample_tokens`` + ``euler_sampler`` step for step: the official time
grid (``argen.nn.flow.flowar_time_grid``: 25 -> 24 steps), the CFG batch [cond ; null class], guidance
cfg_k = 1 + (cfg - 1) k / (K - 1) at scale k (so none at the first), applied only while
guidance_low <= t <= guidance_high; while it applies both halves step with the guided velocity computed
from the conditional state, outside it each half steps on its own. The noise of every scale is one
draw of (rows, s^2, C) from the given ``torch.Generator``: seeding it like the official global seed
gives the official noise on the CPU.

Differences: ``cfg_scale`` 1 (or a constant schedule) works (the official crashes) and computes no
unconditional half; the upsampling size of the next-scale inputs is an option (official: 16).
"""
from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from argen.errors import ConfigError
from argen.generators.protocol import FlowScaleGenerator
from argen.nn.flow import GuidanceFn, VelocityFn, euler_integrate, flowar_time_grid
from argen.samplers.ar import StepCallback
from argen.samplers.logits import SamplingOptions, guide
from argen.samplers.stats import SamplerStats

DEFAULT_STEPS = 25  # FlowAR-S/L as evaluated; FlowAR-H uses 50 with guidance_high 0.7
DEFAULT_GUIDANCE_HIGH = 0.9


def interval_guidance(scale: float | None, low: float, high: float, batch: int) -> GuidanceFn | None:
    """CFG for a [cond ; uncond] state of 2 * ``batch`` rows, active while low <= t <= high (and
    scale > 1): both conditions see the conditional state, and the guided velocity moves both halves."""
    if scale is None or scale <= 1.0:
        return None

    def hook(velocity: VelocityFn, x: torch.Tensor, t: float) -> torch.Tensor:
        if not low <= t <= high:
            return velocity(x, t)
        xc = x[:batch]
        v_cond, v_uncond = velocity(torch.cat([xc, xc]), t).chunk(2)
        g = guide(v_cond, v_uncond, scale)
        return torch.cat([g, g])

    return hook


def _check(opts: SamplingOptions, num_steps: int, low: float, high: float, upsample: int) -> None:
    opts.check_continuous("FlowAR", ("linear", "constant"), temperature=False)  # a deterministic flow ODE
    flowar_time_grid(num_steps)  # validates num_steps
    for name, v in (("guidance_low", low), ("guidance_high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{name} must be a number (a flow time in [0, 1]), got {v!r}")
    if low > high:
        raise ConfigError(f"guidance_low {low} must not exceed guidance_high {high}")
    if isinstance(upsample, bool) or not isinstance(upsample, int) or upsample < 1:
        raise ConfigError(f"upsample_size must be a positive integer, got {upsample!r}")


def sample_flowar(
    model: FlowScaleGenerator,
    cond: torch.Tensor,
    opts: SamplingOptions,
    rng: torch.Generator | None,
    *,
    num_steps: int = DEFAULT_STEPS,
    guidance_high: float = DEFAULT_GUIDANCE_HIGH,
    guidance_low: float = 0.0,
    upsample_size: int = 16,
    progress: bool = False,
    callback: StepCallback | None = None,
    callback_every: int = 1,
) -> tuple[torch.Tensor, SamplerStats]:
    """Sample the final latents as tokens (B, H*H, C) float (``model.unpatchify`` -> the scaled VAE
    latents). ``num_steps``: the official flow-step count per scale (25 -> 24 Euler steps; 50 -> 50).
    ``guidance_high`` is the official ``--guidance``. ``upsample_size``: the intermediate bicubic size
    of the next-scale inputs (official sampler: 16; use the latent size for models trained at other
    resolutions). ``callback(k, tokens)`` after every ``callback_every`` scales with scale k's tokens
    (B, s^2, C). Stats: one forward pass per scale (``accepted_history``: s^2 tokens each); the flow
    head's evaluations are ``stats.head_evaluations`` (one batched call per Euler step and scale)."""
    start = time.perf_counter()
    _check(opts, num_steps, guidance_low, guidance_high, upsample_size)
    b, scales, n_scales = cond.shape[0], model.scales, len(model.scales)
    guided = opts.guided
    labels = torch.cat([cond, model.null_condition(b)]) if guided else cond
    rows = labels.shape[0]
    ada = model.class_embedding(labels)
    dtype, dev = ada.dtype, ada.device
    cache = model.new_cache(rows)
    times = flowar_time_grid(num_steps)
    stats = SamplerStats("ar", b, model.seq_len, guided_rows=rows)
    head_calls = 0
    tokens = x0 = None
    for k in tqdm(range(n_scales), disable=not progress, desc="scales", leave=False):
        s = scales[k]
        z = model.step(tokens, ada, cache)
        stats.forward_passes += 1

        def velocity(x: torch.Tensor, t: float, z: torch.Tensor = z) -> torch.Tensor:
            nonlocal head_calls
            head_calls += 1
            tt = torch.full((x.shape[0],), t, dtype=torch.float64, device=dev)
            return model.velocity(x.to(dtype), tt, z).to(torch.float64)

        noise = torch.randn(rows, s * s, model.token_dim, generator=rng, device=dev)  # float32 in any dtype
        hook = interval_guidance(opts.scale_at(k, n_scales) if guided else None, guidance_low, guidance_high, b)
        x0 = euler_integrate(velocity, noise, times, guidance=hook)[:b]
        stats.accepted_history.append(float(s * s))
        if k + 1 < n_scales:
            nxt = model.next_scale_tokens(x0.to(dtype).transpose(1, 2).reshape(b, -1, s, s), k + 1, upsample_size)
            tokens = torch.cat([nxt, nxt]) if guided else nxt
        if callback is not None and ((k + 1) % callback_every == 0 or k + 1 == n_scales):
            callback(k + 1, x0.to(dtype))
    stats.wall_time_s = time.perf_counter() - start
    stats.head_evaluations = head_calls  # the head runs once per Euler step and scale
    return x0.to(dtype), stats
