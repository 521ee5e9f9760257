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

Sub-token models (``token_shape`` (G,), ELM): the window is over positions, a position's p and q are
the products of its G heads' distributions (drawn independently, as plain AR draws them), and the
residual max(0, p - q) lives on the joint of the G sub-tokens; it is drawn exactly by rejection from p
(:func:`joint_residual`) without building the V ** G table.

With ``window=1`` the sampler is plain AR, bitwise and with the same random stream.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from argen.errors import ArgenError, ConfigError
from argen.generators.protocol import TokenCache, TokenDecoder, TokenGenerator
from argen.samplers.ar import StepCallback
from argen.samplers.compiled import decoder_for
from argen.samplers.logits import SamplingOptions, draw_position, guide_at, target_probs
from argen.samplers.rng import multinomial
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


def joint_residual(p: torch.Tensor, q: torch.Tensor, rng: torch.Generator | None, tries: int = 64,
                   rounds: int = 64) -> torch.Tensor:
    """One draw per row from max(0, P - Q) over the joint of G heads, P and Q the products of the rows'
    per-head distributions p, q (R, G, V) -> ids (R, G). Rejection from P: a candidate x ~ P is kept with
    probability (P(x) - Q(x))+ / P(x), which is exact; the expected number of candidates is 1 / TV(P, Q),
    and a rejection happens with probability TV(P, Q), so a verified slot costs one candidate on average.
    Rows still open after ``rounds`` x ``tries`` candidates (a tiny TV) are drawn from the enumerated joint."""
    out = torch.empty(p.shape[:-1], dtype=torch.long, device=p.device)
    todo = torch.arange(p.shape[0], device=p.device)
    cdf = p.double().cumsum(dim=-1)
    for _ in range(rounds):
        c = cdf[todo]
        u = torch.rand(c.shape[:-1] + (tries,), generator=rng, device=p.device, dtype=torch.float64)
        cand = torch.searchsorted(c, u * c[..., -1:], right=True).clamp_(max=p.shape[-1] - 1)  # (r, G, T)
        p_c = p[todo].gather(-1, cand).double().prod(dim=1)
        q_c = q[todo].gather(-1, cand).double().prod(dim=1)
        ok = torch.rand(p_c.shape, generator=rng, device=p.device, dtype=torch.float64) * p_c < p_c - q_c
        hit = ok.any(dim=1)
        first = ok.long().argmax(dim=1)
        out[todo[hit]] = cand[hit, :, first[hit]] if hit.any() else out[todo[hit]]
        todo = todo[~hit]
        if not todo.numel():
            return out
    for r in todo.tolist():
        out[r] = _enumerated_residual(p[r], q[r], rng)
    return out


def _enumerated_residual(p: torch.Tensor, q: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """max(0, P - Q) over the V ** G joint of one row (G, V), built outright: the rare fallback."""
    joint_p, joint_q = p[0].double(), q[0].double()
    for g in range(1, p.shape[0]):
        joint_p = (joint_p[:, None] * p[g].double()[None]).flatten()
        joint_q = (joint_q[:, None] * q[g].double()[None]).flatten()
    flat = draw_rows(residual_weights(joint_p, joint_q), rng)
    v = p.shape[-1]
    return torch.stack([(flat // v ** (p.shape[0] - 1 - g)) % v for g in range(p.shape[0])])


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


def joint_prob(p: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Probability of each position's sub-tokens: p (..., G, V), ids (..., G) -> (...), the heads' product."""
    return p.gather(-1, ids[..., None]).squeeze(-1).prod(dim=-1)


def _residual_draw(p: torch.Tensor, q: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """Rows (..., G, V) -> ids (..., G) from max(0, p - q): one head exactly as ``draw_rows`` of
    :func:`coupling_weights`, several through :func:`joint_residual`."""
    if p.shape[-2] == 1:
        return draw_rows(coupling_weights(p, q), rng)
    flat = joint_residual(p.reshape(-1, *p.shape[-2:]), q.reshape(-1, *q.shape[-2:]), rng)
    return flat.view(p.shape[:-1])


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
    p_d, q_d = joint_prob(p_mid, d_mid), joint_prob(q_mid, d_mid)
    keep = accept_mask(p_d, q_d, torch.rand(p_d.shape, generator=rng, device=p.device))
    if p.shape[-2] == 1:
        redraw = _residual_draw(p_mid, q_mid, rng)
    else:  # the joint residual only where a draft is not kept: a kept one has a tiny TV and costs rounds
        redraw, fresh = d_mid.clone(), ~keep
        if bool(fresh.any()):
            redraw[fresh] = _residual_draw(p_mid[fresh], q_mid[fresh], rng)
    last = draw_rows(p[:, -1:], rng)
    return torch.cat([torch.where(keep[..., None], d_mid, redraw), last], dim=1)


def _check(window: int, init: str) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be an integer >= 1 (tokens per forward pass), got {window!r}")
    if init not in INITS:
        raise ConfigError(f"unknown draft init {init!r}; known: {', '.join(INITS)}")


def _init_drafts(tokens: torch.Tensor, fill: torch.Tensor, first_pos: torch.Tensor, codes: torch.Tensor,
                 last: torch.Tensor, init: str, grid_w: int, vocab: int, rng: torch.Generator | None) -> torch.Tensor:
    """Fill the drafts (B, K, G) where ``fill`` (B, K, a suffix of each row) with the init strategy; draft k
    sits at image position first_pos + k; codes (B, N, G) holds the committed tokens (positions <
    first_pos), ``last`` (B, G) the last of them."""
    if not bool(fill.any()):
        return tokens
    fill_g = fill[..., None]
    if init == "random":
        rand = torch.randint(vocab, tokens.shape, generator=rng, device=tokens.device)
        return torch.where(fill_g, rand, tokens)
    if init == "repeat-left":  # every filled slot repeats the token just before the suffix
        at = (~fill).sum(1, keepdim=True)[..., None].expand(-1, -1, tokens.shape[-1])
        before = torch.cat([last[:, None], tokens], dim=1).gather(1, at)
        return torch.where(fill_g, before, tokens)
    out = tokens.clone()
    n = codes.shape[1]
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    for k in range(tokens.shape[1]):
        left = last if k == 0 else out[:, k - 1]
        above = first_pos + k - grid_w  # repeat-above; the first grid row repeats left
        committed = codes[rows, above.clamp(0, n - 1)]
        drafted = out[:, k - grid_w] if k >= grid_w else committed
        new = torch.where((above < 0)[:, None], left, torch.where((above < first_pos)[:, None], committed, drafted))
        out[:, k] = torch.where(fill_g[:, k], new, out[:, k])
    return out


@dataclass
class _Run:
    """The call's fixed context, read by every step: decoder and cache, the codes (written in place), options."""

    dec: TokenDecoder
    cache: TokenCache
    codes: torch.Tensor  # (B, N, G) committed tokens (G = 1 for one code per position)
    opts: SamplingOptions
    rng: torch.Generator | None
    window: int
    init: str
    ragged: bool
    coupled: bool
    vocab: int
    grid_w: int
    prefix: int
    token_shape: tuple[int, ...]
    slots: torch.Tensor = field(init=False)  # (W,) slot indices of a window

    def __post_init__(self) -> None:
        self.slots = torch.arange(self.window, device=self.codes.device)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One pass: tokens (R, W, G) in the model's shape through the decoder -> logits (R, W, G, V)."""
        logits = self.dec.decode(x.view(*x.shape[:2], *self.token_shape), self.cache)
        return logits.view(*x.shape, logits.shape[-1])

    @property
    def n(self) -> int:
        return self.codes.shape[1]

    @property
    def guided(self) -> bool:
        return self.opts.guided


@dataclass
class _Rows:
    """The samples still running, in cache-row order, and what their next pass verifies; the steps
    below update it in place."""

    active: torch.Tensor  # (M,) the sample of each cache row (guided: row M + i is row i unconditional)
    done: torch.Tensor  # (M,) committed tokens
    drafts: torch.Tensor  # (M, W-1, G) drafts for the positions after the committed ones
    q: torch.Tensor  # (M, W-1, G, V) the distribution each draft was drawn from (per head)


@dataclass
class _Verified:
    """One pass's outcome per row, read by the commit and by the next drafts."""

    p: torch.Tensor  # (M, W, G, V) target distribution at every slot (per head)
    acc: torch.Tensor  # (M,) leading drafts accepted
    cand: torch.Tensor  # (M, W, G) each slot's token after the pass: accepted draft, residual/free token, own sample


def _filled(run: _Run, active: torch.Tensor, done: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor | float,
            fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drafts and q with the slots in ``fill`` from the init strategy: a deterministic token, q one-hot."""
    last = run.codes[active, (done - 1).clamp(max=run.n - 1)]
    drafts = _init_drafts(drafts, fill, done, run.codes[active], last, run.init, run.grid_w, run.vocab, run.rng)
    return drafts, torch.where(fill[..., None, None], torch.nn.functional.one_hot(drafts, run.vocab).float(), q)


def _start(run: _Run, b: int) -> _Rows:
    """The first pass's rows: every sample after its first token, every draft (and q) from the init strategy."""
    dev = run.codes.device
    active, done = torch.arange(b, device=dev), torch.ones(b, dtype=torch.long, device=dev)
    blank = torch.zeros(b, run.window - 1, run.codes.shape[-1], dtype=torch.long, device=dev)
    everywhere = torch.ones_like(blank[..., 0], dtype=torch.bool)
    return _Rows(active, done, *_filled(run, active, done, blank, 0.0, everywhere))


def _accepted(p: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """Leading drafts accepted per row, each with probability min(1, p(d) / q(d)) (one uniform per draft)."""
    w1 = drafts.shape[1]
    if not w1:
        return torch.zeros(drafts.shape[0], dtype=torch.long, device=drafts.device)
    p_d, q_d = joint_prob(p[:, :w1], drafts), joint_prob(q, drafts)
    r = torch.rand(p_d.shape, generator=rng, device=drafts.device)
    return accepted_prefix(accept_mask(p_d, q_d, r))


def _residual(p: torch.Tensor, q: torch.Tensor, acc: torch.Tensor, opts: SamplingOptions,
              rng: torch.Generator | None) -> torch.Tensor:
    """The token (M, G) at slot ``acc``: from max(0, p - q) at the first rejection, from p (free) if all passed.
    Sub-tokens: the free rows draw head by head as plain AR does (so ``window=1`` is AR bitwise), the
    rejected ones from the joint residual."""
    w1 = q.shape[1]
    rows = torch.arange(acc.shape[0], device=acc.device)
    p_slot = p[rows, acc]
    q_slot = q[rows, acc.clamp(max=w1 - 1)] if w1 else torch.zeros_like(p_slot)
    free = acc == w1
    if p.shape[-2] == 1:
        q_slot = torch.where(free[:, None, None], torch.zeros_like(q_slot), q_slot)
        return torch.multinomial(residual_weights(p_slot[:, 0], q_slot[:, 0]), 1, generator=rng)
    out = torch.empty(p_slot.shape[:-1], dtype=torch.long, device=p.device)
    if bool(free.any()):
        p_free = p_slot[free]
        out[free] = torch.stack([multinomial(p_free[:, g], rng) for g in range(p_free.shape[1])], dim=1)
    if not bool(free.all()):
        out[~free] = joint_residual(p_slot[~free], q_slot[~free], rng)
    return out


def _verify(run: _Run, rows: _Rows) -> _Verified:
    """One forward pass over each row's window (its last committed token, then its drafts): target probs,
    the accepted prefix, the residual/free token after it, and this pass's own samples in the later slots."""
    drafts, q = rows.drafts, rows.q
    x = torch.cat([run.codes[rows.active, rows.done - 1][:, None], drafts], dim=1)
    logits = run.step(torch.cat([x, x]) if run.guided else x)
    index = rows.done[:, None] + run.slots  # the image position each slot predicts
    p = target_probs(guide_at(logits, index, run.opts, run.n) if run.guided else logits, run.opts)
    acc = _accepted(p, drafts, q, run.rng)
    new_tok = _residual(p, q, acc, run.opts, run.rng)
    fresh = _next_samples(p, drafts, q, run.coupled, run.rng) if drafts.shape[1] else drafts
    cand = torch.cat([drafts, new_tok[:, None]], dim=1)
    cand[torch.arange(acc.shape[0], device=acc.device), acc] = new_tok
    cand[:, 1:] = torch.where((run.slots[None, 1:] > acc[:, None])[..., None], fresh, cand[:, 1:])
    return _Verified(p, acc, cand)


def _commit(run: _Run, rows: _Rows, v: _Verified, stats: SamplerStats) -> torch.Tensor:
    """Write the accepted drafts and the token after them to ``codes``, count the pass, drop the rejected
    cache entries, advance ``rows.done``; returns each row's committed drafts (``ragged=False``: the minimum)."""
    n, slots, done = run.n, run.slots, rows.done
    step = v.acc if run.ragged else v.acc.min().expand_as(v.acc)
    pos = done[:, None] + slots
    write = (slots[None] <= step[:, None]) & (pos < n)
    run.codes[rows.active[:, None].expand_as(pos)[write], pos[write]] = v.cand[write]
    grew = (step + 1).clamp(max=n - done)
    stats.forward_passes += 1
    hist = torch.bincount(grew, minlength=run.window + 1).tolist()
    stats.accept_histogram = [a + h for a, h in zip(stats.accept_histogram, hist)]
    stats.accepted_history.append(float(grew.float().mean()))
    run.cache.truncate((run.prefix + done + step).repeat(2 if run.guided else 1))
    rows.done = done + step + 1
    return step


def _next_drafts(run: _Run, rows: _Rows, v: _Verified, step: torch.Tensor) -> None:
    """The next pass's drafts: this pass's tokens in the slots after the committed ones (q: this pass's p
    there; kept accepted drafts, ``ragged=False`` only: kept_draft_probs), then the init strategy."""
    window, w1 = run.window, run.window - 1
    src = step[:, None] + 1 + run.slots[None, :w1]
    keep = src < window
    src = src.clamp(max=window - 1)
    nxt = v.cand.gather(1, src[..., None].expand(-1, -1, v.cand.shape[-1]))
    q_next = v.p.gather(1, src[..., None, None].expand(-1, -1, *v.p.shape[2:]))
    kept_acc = keep & (src < v.acc[:, None])  # accepted drafts carried over (ragged=False only)
    if bool(kept_acc.any()):
        q_old = rows.q.gather(1, src.clamp(max=w1 - 1)[..., None, None].expand(-1, -1, *v.p.shape[2:]))
        q_next = torch.where(kept_acc[..., None, None], kept_draft_probs(q_next, q_old), q_next)
    rows.drafts, rows.q = _filled(run, rows.active, rows.done, nxt, q_next, ~keep)


def _drop_finished(run: _Run, rows: _Rows) -> None:
    """Samples with every token committed leave the active set and the cache (both halves under CFG)."""
    finished = rows.done >= run.n
    if bool(finished.any()):
        left = (~finished).nonzero().squeeze(1)
        run.cache.select(torch.cat([left, left + rows.active.numel()]) if run.guided else left)
        rows.active, rows.done = rows.active[left], rows.done[left]
        rows.drafts, rows.q = rows.drafts[left], rows.q[left]


def sample_sjd(
    model: TokenGenerator,
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
    _check(window, init)
    start = time.perf_counter()
    b, n = cond.shape[0], model.seq_len
    inp = torch.cat([cond, model.null_condition(b)]) if opts.guided else cond
    dec = decoder_for(model, compile)
    cache = dec.new_cache(inp.shape[0], model.prefix_len + n + window - 1)
    shape = tuple(model.token_shape)
    codes = torch.zeros(b, n, math.prod(shape), dtype=torch.long, device=cache.lengths.device)
    run = _Run(dec, cache, codes, opts, rng, window, init, ragged, coupled, model.vocab_size, model.token_grid[1],
               model.prefix_len, shape)
    stats = SamplerStats("sjd", b, n, guided_rows=inp.shape[0])
    stats.accept_histogram = [0] * (window + 1)

    logits = dec.prefill(inp, cache)
    stats.forward_passes = 1
    zero = torch.zeros(b, 1, dtype=torch.long, device=codes.device)
    first = draw_position(guide_at(logits[:, None], zero, opts, n)[:, 0] if opts.guided else logits, opts, rng)
    codes[:, 0] = first.view(b, -1)
    rows = _start(run, b)
    bar = tqdm(total=n, disable=not progress, desc="sjd", unit="tok", leave=False)
    bar.update(1)
    reported = 0
    while rows.active.numel():
        verified = _verify(run, rows)
        step = _commit(run, rows, verified, stats)
        _next_drafts(run, rows, verified, step)
        _drop_finished(run, rows)
        low = int(rows.done.min()) if rows.done.numel() else n
        bar.update(low - bar.n)
        if callback is not None and (low // callback_every > reported // callback_every or low == n):
            callback(low, codes[:, :low].view(b, low, *shape))
            reported = low
    bar.close()
    stats.wall_time_s = time.perf_counter() - start
    return codes.view(b, n, *shape), stats
