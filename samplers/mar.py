"""MAR's iterative masked sampling for continuous-token generators: a random order per image, a
cosine schedule of how many tokens stay masked after each of ``num_iter`` steps, and per step the
transformer's conditions for all masked tokens, of which the ones leaving the mask are drawn by the
diffusion head (``diffusion_steps`` reverse steps, guidance on the predicted noise).

Follows the official ``MAR.sample_tokens`` step for step (mask lengths, the linear CFG schedule
1 + (cfg - 1) (L - mask_len) / L, guidance whenever cfg != 1 as in the official code, temperature on
the injected noise). Randomness comes from one ``torch.Generator`` (orders, initial and injected
noise) instead of numpy's and torch's global generators, so a seed gives the same images anywhere.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from argen.errors import ConfigError
from argen.generators.protocol import ContinuousGenerator
from argen.samplers.ar import StepCallback
from argen.samplers.logits import SamplingOptions
from argen.samplers.stats import SamplerStats


def mask_lengths(seq_len: int, num_iter: int) -> list[int]:
    """The official ``mask_len`` of each step: floor(L cos(pi/2 (k+1)/K)) clamped to [1, masked - 1].
    It is how many tokens stay masked after step k (the last step predicts every token left) and
    what the linear CFG schedule reads, at the last step too (where it is 1)."""
    out, masked = [], seq_len
    for k in range(num_iter):
        n = math.floor(seq_len * math.cos(math.pi / 2.0 * (k + 1) / num_iter))
        n = max(1, min(masked - 1, n))
        out.append(n)
        masked = n
    return out


ORDERS = ("random", "raster")


def generation_orders(model: ContinuousGenerator, batch_size: int, order: str, rng: torch.Generator | None,
                      device: torch.device) -> torch.Tensor:
    """(B, L) token positions, the one generated LAST first (the official layout: the first
    ``mask_len`` entries stay masked). 'random': a random permutation per image (official);
    'raster': row by row from the top left, so that every new token has its left and upper neighbours
    known (a small, young MAR completes local context better than it guesses from a few scattered
    tokens; measurements in assets/shapes-mar/README.md, "Why the extensions")."""
    if order == "random":
        return model.random_orders(batch_size, rng)
    return torch.arange(model.seq_len - 1, -1, -1, device=device).expand(batch_size, -1)


def check_schedule(schedule: Sequence[int], seq_len: int) -> list[int]:
    """An explicit mask schedule: how many tokens stay masked after each step, strictly decreasing
    from below ``seq_len`` and at least 1 (the last entry feeds only the linear CFG schedule: the last
    step predicts every token left)."""
    out = list(schedule)
    ok = (out and all(isinstance(v, int) and not isinstance(v, bool) for v in out) and 1 <= out[-1]
          and out[0] < seq_len and all(a > b for a, b in zip(out, out[1:-1])) and
          (len(out) == 1 or out[-1] <= out[-2]))
    if not ok:
        raise ConfigError(f"schedule must list, per step, the tokens left masked: integers decreasing from below "
                          f"{seq_len} to >= 1, got {schedule!r}")
    return out


def guidance_at(opts: SamplingOptions, seq_len: int, left: int) -> float | None:
    """The CFG scale of a step after which ``left`` tokens stay masked (None: no guidance): constant, or
    the official linear ramp 1 + (cfg - 1) (L - left) / L."""
    if opts.cfg_scale == 1.0:
        return None
    if opts.cfg_schedule == "linear":
        return 1.0 + (opts.cfg_scale - 1.0) * (seq_len - left) / seq_len
    return opts.cfg_scale


def _check(opts: SamplingOptions, num_iter: int, seq_len: int, order: str) -> None:
    opts.check_continuous("MAR", ("linear", "constant"))
    if order not in ORDERS:
        raise ConfigError(f"unknown MAR generation order {order!r}; known: {', '.join(ORDERS)}")
    if isinstance(num_iter, bool) or not isinstance(num_iter, int) or not 1 <= num_iter <= seq_len:
        raise ConfigError(f"num_iter must be an integer in [1, {seq_len}] (the token count), got {num_iter!r}")


def check_diffusion_steps(model: ContinuousGenerator, diffusion_steps: int | None) -> int:
    steps = diffusion_steps if diffusion_steps is not None else model.sampling_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"diffusion_steps must be a positive integer, got {steps!r}")
    return steps


def sample_mar(
    model: ContinuousGenerator,
    cond: torch.Tensor,
    opts: SamplingOptions,
    rng: torch.Generator | None,
    *,
    num_iter: int | None = None,
    diffusion_steps: int | None = None,
    order: str = "random",
    final_noise: bool = False,
    schedule: Sequence[int] | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    callback_every: int = 1,
) -> tuple[torch.Tensor, SamplerStats]:
    """Sample all tokens (B, L, C) float for class ids ``cond``. ``num_iter``: transformer passes
    (default 64 as the official script; its reported FIDs use 256). ``diffusion_steps``: the head's
    reverse steps per token (default: the model's ``num_sampling_steps``). ``order``: 'random' (official)
    or 'raster' (see :func:`generation_orders`). ``final_noise``: the head's last reverse step draws
    from its Gaussian instead of taking its mean (official: False); the distribution cspd reproduces.
    ``schedule``: tokens left masked after each step, instead of the cosine one of ``num_iter`` steps
    (e.g. :func:`argen.samplers.cspd.coarse_schedule`). ``callback(step, tokens)``
    every ``callback_every`` steps with the tokens so far (unknown ones are 0)."""
    start = time.perf_counter()
    b, n, dim = cond.shape[0], model.seq_len, model.token_dim
    if schedule is not None:
        lefts = check_schedule(schedule, n)
        num_iter = len(lefts)
    num_iter = min(64, n) if num_iter is None else num_iter
    _check(opts, num_iter, n, order)
    lefts = mask_lengths(n, num_iter) if schedule is None else lefts
    steps = check_diffusion_steps(model, diffusion_steps)
    guided = opts.cfg_scale != 1.0
    emb = model.class_embedding(cond)
    dev, dtype = emb.device, emb.dtype
    if guided:
        emb = torch.cat([emb, model.class_embedding(None, b)])
    tokens = torch.zeros(b, n, dim, device=dev, dtype=dtype)
    mask = torch.ones(b, n, dtype=torch.bool, device=dev)
    orders = generation_orders(model, b, order, rng, dev)
    stats = SamplerStats("ar", b, n, guided_rows=emb.shape[0])
    for step, left in enumerate(tqdm(lefts, disable=not progress, desc="mar", leave=False)):
        inp, m = (torch.cat([tokens, tokens]), torch.cat([mask, mask])) if guided else (tokens, mask)
        z = model.conditions(inp, m, emb)
        stats.forward_passes += 1
        last = step == num_iter - 1
        nxt = torch.zeros_like(mask) if last else torch.zeros_like(mask).scatter_(1, orders[:, :left], True)
        to_pred = mask & ~nxt
        scale = guidance_at(opts, n, left)
        zz = torch.cat([z[:b][to_pred], z[b:][to_pred]]) if guided else z[to_pred]
        if zz.shape[0]:
            tokens[to_pred] = model.sample_tokens(zz, opts.temperature, scale, rng, steps, final_noise).to(dtype)
            stats.head_evaluations += steps
        mask = nxt
        stats.accepted_history.append(float(to_pred.sum()) / b)
        if callback is not None and ((step + 1) % callback_every == 0 or step + 1 == num_iter):
            callback(step + 1, tokens)
    stats.wall_time_s = time.perf_counter() - start
    return tokens, stats
