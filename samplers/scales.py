"""Next-scale sampling for scale-wise generators (VAR): one forward pass per scale with a KV cache,
every token of a scale drawn at once.

Matches the official ``autoregressive_infer_cfg`` (ids, guided logits and images; sampled ids too
with the same seed, since the draws use one ``torch.Generator`` in the same order). Differences: with
no guidance (cfg 0 under VAR's schedule) the unconditional half is not computed at all, and the
options are the shared ones (temperature and greedy are extras; temperature 1 is the official).
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from argen.generators.protocol import ScaleGenerator
from argen.samplers.ar import Pick, StepCallback
from argen.samplers.logits import SamplingOptions, draw, process_logits, split_guided
from argen.samplers.rng import Rng, exponential_like
from argen.samplers.stats import SamplerStats


def sample_scales(
    model: ScaleGenerator,
    cond: torch.Tensor,
    opts: SamplingOptions,
    rng: Rng,
    *,
    more_smooth: bool = False,
    progress: bool = False,
    callback: StepCallback | None = None,
    callback_every: int = 1,
) -> tuple[torch.Tensor, SamplerStats]:
    """Sample every scale of ``model.patch_nums``; returns flat codes (B, L) in scale order.

    ``more_smooth`` (official option, for visuals): each scale enters the next ones as a Gumbel-softmax
    mixture of code vectors instead of its drawn codes; the image is then decoded from that chain's
    latent (``stats.latents``, which the pipeline uses), not from the returned codes.
    ``callback(n_scales_done, codes_so_far)`` runs after every ``callback_every`` scales.
    """
    return scale_by_scale(model, cond, opts, lambda si, logits: draw(logits, opts, rng), "ar", rng,
                          more_smooth=more_smooth, progress=progress, callback=callback, callback_every=callback_every)


def scale_by_scale(model: ScaleGenerator, cond: torch.Tensor, opts: SamplingOptions, pick: Pick, name: str, rng: Rng,
                   *, more_smooth: bool, progress: bool, callback: StepCallback | None,
                   callback_every: int) -> tuple[torch.Tensor, SamplerStats]:
    """The scale-by-scale loop with a KV cache and CFG; ``pick(si, logits)`` turns scale si's logits into
    ids (``rng``: more_smooth's Gumbel noise)."""
    start = time.perf_counter()
    patch_nums = model.patch_nums
    b, n_scales = cond.shape[0], len(patch_nums)
    guided = opts.guided
    labels = torch.cat([cond, model.null_condition(b)]) if guided else cond
    extrapolate = opts.cfg_schedule == "var"
    cache = model.new_cache(labels.shape[0])
    cnd = model.condition(labels)
    x = model.first_scale_input(cnd)
    stats = SamplerStats(name, b, model.seq_len, guided_rows=labels.shape[0])
    codes, f_hat = [], None
    for si in tqdm(range(n_scales), disable=not progress, desc="scales", leave=False):
        logits = model.step(x, cnd, cache)
        stats.forward_passes += 1
        if guided:
            logits = split_guided(logits, opts.scale_at(si, n_scales), extrapolate)
        ids = pick(si, logits)
        codes.append(ids)
        if more_smooth:
            pn = patch_nums[si]
            ratio = si / max(n_scales - 1, 1)
            tau = max(0.27 * (1 - ratio * 0.95), 0.005)  # MaskGIT-style annealing, as the official
            gumbel = -exponential_like(logits, rng).log()
            soft = ((process_logits(logits, opts) * (1 + ratio) + gumbel) / tau).softmax(dim=-1)
            h = (soft @ model.code_vectors).transpose(1, 2).reshape(b, -1, pn, pn)
            f_hat, nxt = model.add_scale(si, f_hat, h)
        elif si + 1 < n_scales:
            f_hat, nxt = model.add_scale(si, f_hat, ids)
        if si + 1 < n_scales:
            x = model.scale_input(nxt, si + 1)
            if guided:
                x = torch.cat([x, x])
        if callback is not None and ((si + 1) % callback_every == 0 or si + 1 == n_scales):
            callback(si + 1, torch.cat(codes, dim=1))
    stats.wall_time_s = time.perf_counter() - start
    stats.accepted_history = [float(p * p) for p in patch_nums]
    if more_smooth:
        stats.latents = f_hat
    return torch.cat(codes, dim=1), stats
