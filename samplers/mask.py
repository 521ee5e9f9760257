"""MaskGIT-style iterative parallel decoding for masked generators (kind "masked"; ELM's MLM sampler).

All positions start masked. Each of ``num_iter`` steps runs the model once (the [cond ; null] batch where
guidance applies, scale ``opts.scale_at(step, num_iter)``), draws every masked position from the processed
distribution (temperature / top-k / top-p of :mod:`argen.samplers.logits`; the sub-tokens of a position
independently), scores each position by log p(drawn) plus Gumbel noise scaled by
``choice_temperature * (1 - (step + 1) / num_iter)``, averaged over its sub-tokens, and keeps all but the
least confident: after step k, floor(N cos(pi/2 (k + 1) / num_iter)) positions stay masked (at least 1,
at most those still unknown - 1; :func:`argen.samplers.mar.mask_lengths`), the last step fixes the rest.
A fixed position is never masked again.

Differences from the official ``generate_cfg`` of ``llama/mlm_model.py`` (none checked against its numbers:
there is no MLM fixture, and its noise is unseeded):

* the Gumbel noise comes from the run's generator (:mod:`argen.samplers.rng`, so per-image streams work),
  not from numpy's global RNG, which the official scripts never seed: official runs are not reproducible;
* the official loop samples from the raw guided logits (its ``temperature`` scales only the noise and its
  ``top_k`` is ignored); here temperature / top-k / top-p process the logits too, and ``choice_temperature``
  (default: ``temperature``) scales the noise. Temperature 1 without top-k / top-p is the official sampling;
* exactly ``floor(...)`` positions are re-masked (the official ``confidence <= cut-off`` re-masks every tie);
* the official 'powercos' guidance schedule is not offered (constant and the ramps of logits.py are).

What the confidence selection does to the distribution: a drawn value is kept more often when it is
likely, so for num_iter > 1 the per-position marginals are sharper than the processed distribution; they
equal it only where the selection ignores the drawn values (one step, or noise that swamps log p).
"""
from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from argen.errors import ConfigError
from argen.generators.protocol import MaskedGenerator
from argen.samplers.ar import StepCallback
from argen.samplers.logits import SamplingOptions, split_guided, token_probs
from argen.samplers.mar import mask_lengths
from argen.samplers.rng import Rng, exponential_like, multinomial
from argen.samplers.stats import SamplerStats


def check_mask_options(num_iter: int, seq_len: int, choice_temperature: float) -> None:
    """One-line ConfigErrors for the mask sampler's own options."""
    if isinstance(num_iter, bool) or not isinstance(num_iter, int) or not 1 <= num_iter <= seq_len:
        raise ConfigError(f"num_iter must be an integer in [1, {seq_len}] (the positions per image), got {num_iter!r}")
    t = choice_temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise ConfigError(f"choice_temperature must be a finite number >= 0, got {t!r}")


def confidence(logp: torch.Tensor, noise_scale: float, rng: Rng) -> torch.Tensor:
    """log p of the drawn sub-tokens (B, N, *token_shape) plus ``noise_scale`` x Gumbel noise per sub-token,
    averaged over a position's sub-tokens -> (B, N). (A sum ranks the positions the same way.)"""
    gumbel = -torch.log(exponential_like(logp, rng))  # drawn at scale 0 too: the streams stay aligned
    score = logp + noise_scale * gumbel if noise_scale > 0 else logp
    return score.flatten(2).mean(-1) if score.dim() > 2 else score


def sample_mask(
    model: MaskedGenerator,
    cond: torch.Tensor,
    opts: SamplingOptions,
    rng: Rng,
    *,
    num_iter: int | None = None,
    choice_temperature: float | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    callback_every: int = 1,
) -> tuple[torch.Tensor, SamplerStats]:
    """Codes (B, N, *token_shape) int64 for class ids ``cond`` in ``num_iter`` passes (default
    min(10, N), the official scripts' ``--gen_iter_num``). ``choice_temperature``: scale of the confidence
    noise (default ``opts.temperature``, as the official loop; 0: the most likely draws stay). ``callback(step,
    codes)`` every ``callback_every`` steps with the codes so far (masked positions 0)."""
    start = time.perf_counter()
    b, n, shape = cond.shape[0], model.seq_len, tuple(model.token_shape)
    num_iter = min(10, n) if num_iter is None else num_iter
    choice_t = opts.temperature if choice_temperature is None else choice_temperature
    check_mask_options(num_iter, n, choice_t)
    lefts = mask_lengths(n, num_iter)
    dev = cond.device
    tokens = torch.zeros(b, n, *shape, dtype=torch.long, device=dev)
    masked = torch.ones(b, n, dtype=torch.bool, device=dev)
    null = model.null_condition(b) if opts.guided else None
    stats = SamplerStats("mask", b, n, guided_rows=2 * b if opts.guided else b)
    pos = (...,) + (None,) * len(shape)  # a (B, N) mask over (B, N, *token_shape)
    for step, left in enumerate(tqdm(lefts, disable=not progress, desc="mask", leave=False)):
        scale = opts.scale_at(step, num_iter)
        if scale is None:
            logits = model.masked_logits(tokens, masked, cond)
        else:
            both = model.masked_logits(torch.cat([tokens, tokens]), torch.cat([masked, masked]),
                                       torch.cat([cond, null]))
            logits = split_guided(both, scale, opts.cfg_schedule == "var")
        stats.forward_passes += 1
        probs = token_probs(logits.reshape(-1, logits.shape[-1]), opts).view(logits.shape)
        ids = logits.argmax(-1) if opts.is_greedy else multinomial(probs, rng)
        drawn = torch.where(masked[pos], ids, tokens)
        if step == num_iter - 1:
            keep_masked = torch.zeros_like(masked)
        else:
            # greedy: temperature 0 would make every log p 0, so the guided distribution itself ranks
            dist = logits.log_softmax(-1) if opts.is_greedy else probs.log()
            logp = dist.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            conf = confidence(logp, choice_t * (1.0 - (step + 1) / num_iter), rng).masked_fill(~masked, math.inf)
            least = conf.topk(left, dim=1, largest=False).indices
            keep_masked = torch.zeros_like(masked).scatter_(1, least, True)
        stats.accepted_history.append(float((masked & ~keep_masked).sum()) / b)
        masked = keep_masked
        tokens = drawn.masked_fill(masked[pos], 0)
        if callback is not None and ((step + 1) % callback_every == 0 or step + 1 == num_iter):
            callback(step + 1, tokens)
    stats.wall_time_s = time.perf_counter() - start
    return tokens, stats
