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

from argen.errors import ConfigError
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
                   *, more_smooth: bool, progress: bool, callback: StepCallback | None, callback_every: int,
                   prefix: torch.Tensor | None = None, stop: int | None = None,
                   prefix_pass: str = "block-causal") -> tuple[torch.Tensor, SamplerStats]:
    """The scale-by-scale loop with a KV cache and CFG; ``pick(si, logits)`` turns scale si's logits into
    ids (``rng``: more_smooth's Gumbel noise). ``prefix`` (B, n): the given codes of the first scales
    (whole scales), teacher-forced scale by scale ('block-causal', as in training) or, as the official DD
    combine sampler does, in one pass where the prefix scales see each other both ways ('unmasked');
    ``stop``: sample the scales before it only."""
    start = time.perf_counter()
    patch_nums = model.patch_nums
    b, n_scales = cond.shape[0], len(patch_nums)
    n_run = n_scales if stop is None else stop
    guided = opts.guided
    labels = torch.cat([cond, model.null_condition(b)]) if guided else cond
    extrapolate = opts.cfg_schedule == "var"
    cache = model.new_cache(labels.shape[0])
    cnd = model.condition(labels)
    x = model.first_scale_input(cnd)
    stats = SamplerStats(name, b, model.seq_len, guided_rows=labels.shape[0])
    codes, f_hat, k, logits = [], None, 0, None
    if prefix is not None:
        codes = _split_prefix(prefix, patch_nums)
        k = len(codes)
        inputs = [x]
        for si, ids in enumerate(codes):
            f_hat, nxt = model.add_scale(si, f_hat, ids)
            inputs.append(torch.cat([model.scale_input(nxt, si + 1)] * (2 if guided else 1)))
        if prefix_pass == "unmasked":
            logits = model.step(torch.cat(inputs, dim=1), cnd, cache)[:, -patch_nums[k] ** 2 :]
            stats.forward_passes += 1
        else:
            for inp in inputs:
                logits = model.step(inp, cnd, cache)
                stats.forward_passes += 1
    for si in tqdm(range(k, n_run), disable=not progress, desc="scales", leave=False):
        if logits is None:
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
        logits = None
        if callback is not None and ((si + 1) % callback_every == 0 or si + 1 == n_scales):
            callback(si + 1, torch.cat(codes, dim=1))
    stats.wall_time_s = time.perf_counter() - start
    stats.accepted_history = [float(p * p) for p in patch_nums]
    if more_smooth:
        stats.latents = f_hat
    return torch.cat(codes, dim=1), stats


def _split_prefix(prefix: torch.Tensor, patch_nums: list[int]) -> list[torch.Tensor]:
    """Flat codes (B, n) of whole leading scales -> one (B, pn^2) tensor per scale."""
    sizes, total = [], 0
    for pn in patch_nums:
        if total == prefix.shape[1]:
            break
        sizes.append(pn * pn)
        total += pn * pn
    if total != prefix.shape[1] or len(sizes) == len(patch_nums):
        raise ConfigError(f"a prefix of {prefix.shape[1]} codes is not a run of whole scales before the last "
                          f"(scales {patch_nums})")
    return list(prefix.split(sizes, dim=1))
