"""Plain autoregressive sampling with a static KV cache (one token per forward pass).

Matches the official LlamaGen ``generate()`` token for token (greedy, and sampled with the same RNG
stream), but reads only the filled part of the cache, and drops the unconditional half of the CFG
batch as soon as guidance has ended (``cfg_interval``), which the official loop keeps computing.
``compile=True`` runs each decode step as one compiled graph (:mod:`argen.samplers.compiled`).
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from tqdm.auto import tqdm

from argen.generators.protocol import TokenGenerator
from argen.samplers.compiled import decoder_for
from argen.samplers.logits import SamplingOptions, draw_position, split_guided
from argen.samplers.stats import SamplerStats

StepCallback = Callable[[int, torch.Tensor], None]
# how a sampler turns one step's (guided) logits into ids: (position, logits (B, *token_shape, V)) -> ids
Pick = Callable[[int, torch.Tensor], torch.Tensor]


def sample_ar(
    model: TokenGenerator,
    cond: torch.Tensor,
    opts: SamplingOptions,
    rng: torch.Generator | None,
    *,
    progress: bool = False,
    callback: StepCallback | None = None,
    callback_every: int = 16,
    compile: bool = False,
) -> tuple[torch.Tensor, SamplerStats]:
    """Sample ``model.seq_len`` tokens per condition. ``callback(n_done, codes)`` is called every
    ``callback_every`` tokens with the codes so far (for live previews). ``compile``: decode steps
    through ``torch.compile`` (CUDA graphs on CUDA); the same tokens, the first call pays the compile."""
    return token_by_token(model, cond, opts, lambda i, logits: draw_position(logits, opts, rng), "ar",
                          progress=progress, callback=callback, callback_every=callback_every, compile=compile)


def token_by_token(model: TokenGenerator, cond: torch.Tensor, opts: SamplingOptions, pick: Pick, name: str, *,
                   progress: bool, callback: StepCallback | None, callback_every: int, compile: bool,
                   prefix: torch.Tensor | None = None, length: int | None = None) -> tuple[torch.Tensor, SamplerStats]:
    """The token-by-token loop with a KV cache and CFG; ``pick`` turns each position's logits into ids.
    Codes are (B, N, *model.token_shape). ``prefix`` (B, k, *token_shape): given first tokens, teacher-forced
    in one causal window; ``length``: stop after that many tokens (default ``model.seq_len``)."""
    start = time.perf_counter()
    b, n = cond.shape[0], model.seq_len if length is None else length
    k = 0 if prefix is None else prefix.shape[1]
    guided = opts.guided
    inp = torch.cat([cond, model.null_condition(b)]) if guided else cond
    dec = decoder_for(model, compile)
    cache = dec.new_cache(inp.shape[0])
    codes = torch.empty(b, n, *model.token_shape, dtype=torch.long, device=cache.lengths.device)
    stats = SamplerStats(name, b, n, guided_rows=inp.shape[0])

    logits = dec.prefill(inp, cache)
    stats.forward_passes = 1
    if k:
        codes[:, :k] = prefix
        logits = dec.decode(torch.cat([prefix, prefix]) if guided else prefix, cache)[:, -1]
        stats.forward_passes += 1
    for i in tqdm(range(k, n), disable=not progress, desc="sampling", unit="tok", leave=False):
        if i > k:
            x = codes[:, i - 1 : i]
            logits = dec.decode(torch.cat([x, x]) if guided else x, cache)[:, -1]
            stats.forward_passes += 1
        if guided:
            scale = opts.scale_at(i, n)
            logits = split_guided(logits, scale)
            if scale is None and opts.cfg_interval > -1:
                # guidance is over for good: keep only the conditional rows from now on
                cache.select(torch.arange(b, device=codes.device))
                guided = False
        codes[:, i] = pick(i, logits)
        if callback is not None and ((i + 1) % callback_every == 0 or i + 1 == n):
            callback(i + 1, codes[:, : i + 1])
    stats.wall_time_s = time.perf_counter() - start
    stats.accepted_history = [1.0] * stats.forward_passes
    return codes, stats
