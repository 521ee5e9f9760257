"""Speculative Jacobi Decoding (SJD, Teng et al., arXiv 2410.01699), exact for any batch size.

Each forward pass feeds a window of W tokens per sample: the last committed token and W - 1 drafts.
Drafts are verified left to right with the speculative-sampling rule against the target distribution
p (the processed distribution plain AR would draw from: CFG, temperature, top-k, top-p): a draft d
drawn from q is accepted with probability min(1, p(d) / q(d)); at the first rejection a token is drawn
from max(0, p - q) (normalised by the multinomial, never re-warped) and verification stops; if every
draft is accepted the last slot's distribution gives one more token for free. The next drafts are
this pass's own samples for the slots after the rejection (Jacobi iteration: their q is this pass's
p at those slots), topped up by the initialisation strategy (a deterministic token, q one-hot).

Batches are ragged: every sample advances by its own accepted length, through per-row lengths in
the shared KV cache (rejected entries are dropped by moving the length back). ``ragged=False`` moves
every sample by the batch minimum instead (uniform cache lengths, no attention mask); the accepted
drafts a sample keeps are then re-used with q := p, a ratio of exactly 1, never re-tested against
their old q (the official implementation's batch > 1 bias).

With ``window=1`` the sampler is plain AR, bitwise and with the same random stream.
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from argen.errors import ArgenError, ConfigError
from argen.samplers.ar import StepCallback
from argen.samplers.compiled import decoder_for
from argen.samplers.logits import SamplingOptions, draw, guide_at, target_probs
from argen.samplers.stats import SamplerStats

INITS = ("repeat-left", "repeat-above", "random")


def accept_mask(p_draft: torch.Tensor, q_draft: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """r < p(d) / q(d), without dividing (q(d) > 0 for a token drawn from q)."""
    return r * q_draft < p_draft


def accepted_prefix(ok: torch.Tensor) -> torch.Tensor:
    """Leading accepted drafts per row (B, W-1) -> (B,): verification stops at the first rejection."""
    return ok.long().cumprod(dim=1).sum(dim=1)


def residual_weights(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Unnormalised max(0, p - q) for the slot after the accepted drafts (q = 0 for the free token,
    so that row is p itself). Falls back to p where round-off leaves no mass."""
    w = (p - q).clamp_(min=0.0)
    empty = w.sum(dim=-1, keepdim=True) <= 0
    return torch.where(empty, p, w)


def coupling_weights(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Where a coupled draft is not kept it is redrawn from the same residual max(0, p - q)."""
    return residual_weights(p, q)


def kept_draft_probs(p_kept: torch.Tensor, q_kept: torch.Tensor) -> torch.Tensor:
    """q for accepted drafts a sample keeps for the next pass (``ragged=False``): p itself, so the
    re-check accepts them with probability 1 (same context, same p)."""
    return p_kept


def draw_rows(weights: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """One index per row of unnormalised ``weights`` (..., V) by inverse CDF: one uniform per row
    (``torch.multinomial`` draws V exponentials per row, the largest cost of a pass's bookkeeping on
    the CPU). A zero weight is never drawn (the search is strict); every row needs a positive, finite
    total, as ``torch.multinomial`` requires."""
    cdf = weights.double().cumsum(dim=-1)
    total = cdf[..., -1]
    if not bool(((total > 0) & total.isfinite()).all()):
        raise ArgenError("cannot draw from weights without a positive finite total (NaN or inf logits?)")
    u = torch.rand(weights.shape[:-1] + (1,), generator=rng, device=weights.device, dtype=torch.float64)
    idx = torch.searchsorted(cdf, u * cdf[..., -1:], right=True)
    return idx.clamp_(max=weights.shape[-1] - 1).squeeze(-1)


def _next_samples(p: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor, coupled: bool,
                  rng: torch.Generator | None) -> torch.Tensor:
    """This pass's sample for every slot 1..W-1 (the next drafts where the slot stays unverified):
    independent draws from p, or (``coupled``) a maximal coupling with the slot's current draft: keep
    the draft d with probability min(1, p(d) / q(d)), else draw from max(0, p - q). Either way the
    sample is distributed as p given the pass's context; coupled, it equals the old draft as often as
    possible, so the window's contexts settle and later drafts get accepted (MC-SJD, arXiv 2510.24211)."""
    if not coupled or p.shape[1] < 3:
        return draw_rows(p[:, 1:], rng)
    # slots 1..W-2 hold drafts drafts[:, 1:] (position done + j); the last slot has none
    p_mid, q_mid, d_mid = p[:, 1:-1], q[:, 1:], drafts[:, 1:]
    p_d = p_mid.gather(-1, d_mid[..., None]).squeeze(-1)
    q_d = q_mid.gather(-1, d_mid[..., None]).squeeze(-1)
    keep = accept_mask(p_d, q_d, torch.rand(d_mid.shape, generator=rng, device=p.device))
    redraw = draw_rows(coupling_weights(p_mid, q_mid), rng)
    last = draw_rows(p[:, -1:], rng)
    return torch.cat([torch.where(keep, d_mid, redraw), last], dim=1)


def _check(window: int, init: str, model) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be an integer >= 1 (tokens per forward pass), got {window!r}")
    if init not in INITS:
        raise ConfigError(f"unknown draft init {init!r}; known: {', '.join(INITS)}")
    for attr in ("prefill", "decode", "new_cache", "prefix_len", "vocab_size"):
        if not hasattr(model, attr):
            raise ConfigError(f"SJD needs a token-wise generator (prefill/decode with a KV cache); {type(model).__name__} has no {attr!r}")


def _init_drafts(tokens: torch.Tensor, fill: torch.Tensor, first_pos: torch.Tensor, codes: torch.Tensor,
                 last: torch.Tensor, init: str, grid_w: int, vocab: int, rng: torch.Generator | None) -> torch.Tensor:
    """Fill the drafts where ``fill`` (B, K, a suffix of each row) with the init strategy; draft k
    sits at image position first_pos + k; codes (B, N) holds the committed tokens (positions <
    first_pos), ``last`` the last of them."""
    if not bool(fill.any()):
        return tokens
    if init == "random":
        rand = torch.randint(vocab, tokens.shape, generator=rng, device=tokens.device)
        return torch.where(fill, rand, tokens)
    if init == "repeat-left":  # every filled slot repeats the token just before the suffix
        before = torch.cat([last[:, None], tokens], dim=1).gather(1, (~fill).sum(1, keepdim=True))
        return torch.where(fill, before, tokens)
    out = tokens.clone()
    n = codes.shape[1]
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    for k in range(tokens.shape[1]):
        left = last if k == 0 else out[:, k - 1]
        above = first_pos + k - grid_w  # repeat-above; the first grid row repeats left
        committed = codes[rows, above.clamp(0, n - 1)]
        drafted = out[:, k - grid_w] if k >= grid_w else committed
        new = torch.where(above < 0, left, torch.where(above < first_pos, committed, drafted))
        out[:, k] = torch.where(fill[:, k], new, out[:, k])
    return out


def sample_sjd(
    model,
    cond: torch.Tensor,
    opts: SamplingOptions,
    rng: torch.Generator | None,
    *,
    window: int = 16,
    init: str = "repeat-left",
    ragged: bool = True,
    coupled: bool = True,
    progress: bool = False,
    callback: StepCallback | None = None,
    callback_every: int = 16,
    compile: bool = False,
) -> tuple[torch.Tensor, SamplerStats]:
    """Sample ``model.seq_len`` tokens per condition with SJD; same result distribution as
    :func:`~argen.samplers.ar.sample_ar`. ``init``: repeat-left (the token before), repeat-above (the
    token one grid row up), random (uniform). ``coupled``: next drafts by maximal coupling with the
    current ones (MC-SJD; False: independent samples, the original SJD). ``compile``: each verification
    pass (a window at per-row positions over the whole cache) through ``torch.compile``; finished
    samples stay in the compiled batch (parked, outputs unused) instead of leaving it."""
    _check(window, init, model)
    start = time.perf_counter()
    b, n, vocab = cond.shape[0], model.seq_len, model.vocab_size
    grid_w = getattr(model, "token_grid", (1, n))[1]
    guided = opts.guided
    inp = torch.cat([cond, model.null_condition(b)]) if guided else cond
    prefix = model.prefix_len
    dec = decoder_for(model, compile)
    cache = dec.new_cache(inp.shape[0], prefix + n + window - 1)
    dev = cache.lengths.device
    codes = torch.zeros(b, n, dtype=torch.long, device=dev)
    stats = SamplerStats("sjd", b, n, guided_rows=inp.shape[0])
    stats.accept_histogram = [0] * (window + 1)

    logits = dec.prefill(inp, cache)
    stats.forward_passes = 1
    zero = torch.zeros(b, 1, dtype=torch.long, device=dev)
    codes[:, 0] = draw(guide_at(logits[:, None], zero, opts, n)[:, 0] if guided else logits, opts, rng)
    w1 = window - 1
    done = torch.ones(b, dtype=torch.long, device=dev)  # committed tokens per sample
    active = torch.arange(b, device=dev)  # samples still running, in cache-row order
    drafts = _init_drafts(torch.zeros(b, w1, dtype=torch.long, device=dev), torch.ones(b, w1, dtype=torch.bool, device=dev),
                          done, codes, codes[:, 0], init, grid_w, vocab, rng)
    q = torch.nn.functional.one_hot(drafts, vocab).float()
    slots = torch.arange(window, device=dev)
    bar = tqdm(total=n, disable=not progress, desc="sjd", unit="tok", leave=False)
    bar.update(1)
    reported = 0
    while active.numel():
        m_rows = active.numel()
        rows = torch.arange(m_rows, device=dev)
        last = codes[active, done - 1]
        x = torch.cat([last[:, None], drafts], dim=1)
        logits = dec.decode(torch.cat([x, x]) if guided else x, cache)
        stats.forward_passes += 1
        index = done[:, None] + slots  # the image position each slot predicts
        p = target_probs(guide_at(logits, index, opts, n) if guided else logits, opts)
        if w1:
            p_d = p[:, :w1].gather(-1, drafts[..., None]).squeeze(-1)
            q_d = q.gather(-1, drafts[..., None]).squeeze(-1)
            r = torch.rand(m_rows, w1, generator=rng, device=dev)
            acc = accepted_prefix(accept_mask(p_d, q_d, r))
        else:
            acc = torch.zeros(m_rows, dtype=torch.long, device=dev)
        q_slot = q[rows, acc.clamp(max=w1 - 1)] if w1 else torch.zeros_like(p[:, 0])
        q_slot = torch.where((acc == w1)[:, None], torch.zeros_like(q_slot), q_slot)
        new_tok = torch.multinomial(residual_weights(p[rows, acc], q_slot), 1, generator=rng).squeeze(-1)
        fresh = _next_samples(p, drafts, q, coupled, rng) if w1 else drafts
        # the token each slot holds after this pass: accepted drafts, the residual/free token, own samples
        cand = torch.cat([drafts, new_tok[:, None]], dim=1)
        cand[rows, acc] = new_tok
        after = slots[None, 1:] > acc[:, None]
        cand[:, 1:] = torch.where(after, fresh, cand[:, 1:])
        step = acc if ragged else acc.min().expand_as(acc)
        commit = slots[None] <= step[:, None]
        pos = done[:, None] + slots
        write = commit & (pos < n)
        codes[active[:, None].expand_as(pos)[write], pos[write]] = cand[write]
        grew = (step + 1).clamp(max=n - done)
        hist = torch.bincount(grew, minlength=window + 1).tolist()
        stats.accept_histogram = [a + h for a, h in zip(stats.accept_histogram, hist)]
        stats.accepted_history.append(float(grew.float().mean()))
        cache.truncate((prefix + done + step).repeat(2 if guided else 1))
        done = done + step + 1
        # next drafts: the slots after the committed ones, then the init strategy
        src = step[:, None] + 1 + slots[None, :w1]
        keep = src < window
        src = src.clamp(max=window - 1)
        nxt = cand.gather(1, src)
        q_next = p.gather(1, src[..., None].expand(-1, -1, vocab))
        kept_acc = keep & (src < acc[:, None])  # accepted drafts carried over (ragged=False only)
        if bool(kept_acc.any()):
            q_old = q.gather(1, src.clamp(max=w1 - 1)[..., None].expand(-1, -1, vocab))
            q_next = torch.where(kept_acc[..., None], kept_draft_probs(q_next, q_old), q_next)
        fill = ~keep
        nxt = _init_drafts(nxt, fill, done, codes[active], codes[active, (done - 1).clamp(max=n - 1)], init, grid_w, vocab, rng)
        q_next = torch.where(fill[..., None], torch.nn.functional.one_hot(nxt, vocab).float(), q_next)
        finished = done >= n
        if bool(finished.any()):
            left = (~finished).nonzero().squeeze(1)
            cache.select(torch.cat([left, left + m_rows]) if guided else left)
            active, done, nxt, q_next = active[left], done[left], nxt[left], q_next[left]
        drafts, q = nxt, q_next
        low = int(done.min()) if done.numel() else n
        bar.update(low - bar.n)
        if callback is not None and (low // callback_every > reported // callback_every or low == n):
            callback(low, codes[:, :low])
            reported = low
    bar.close()
    stats.wall_time_s = time.perf_counter() - start
    return codes, stats
