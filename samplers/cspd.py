"""Continuous speculative decoding (CSpD, Wang et al., arXiv 2411.11925) for MAR-style generators: a
smaller draft MAR proposes the next ``gamma`` masked-generation steps, the target verifies them.

``variant="exact"`` (default) samples what plain ``ar`` samples on the target with ``final_noise=True``
(same ``num_iter``, schedule, guidance, temperature, order). Why each piece keeps that distribution:

* *Per-step verification with the step's own context.* The draft runs ``gamma`` steps, each on the
  tokens it drafted before. One target pass (rows of different known-token counts, batched) computes the
  target's conditions for each drafted step with exactly that context, plus one more step (the bonus).
  Step k's target conditions are thus the ones plain ``ar`` would compute if steps before k came out as
  drafted.
* *Per-token acceptance inside a step.* MAR draws a step's tokens independently given the context, so a
  step's tokens are verified one by one: the draft token x ~ q(. | x1 of the draft chain) is kept with
  probability min(1, p(x | x1 of the target chain) / q(x | ...)), the exact Gaussians of both heads'
  last reverse step, else replaced by a draw of the residual (p - q)+ (:mod:`argen.samplers.gaussian_spec`).
  The target chain's x1 is a genuine draw of the target's chain (its noises are fresh Gaussians), and
  given it the kept-or-residual token is a draw of p(. | x1): the token is distributed as the target's.
* *Trajectory alignment.* Draft and target chains of a token share the initial noise and the noise of
  every reverse step but the last; only that makes the two last-step Gaussians close enough to accept.
  The draft's last-step noise, the uniforms and the residual's proposals are fresh.
* *Stop at the first rejected step.* Once a step has a replaced token, the later drafted steps were
  drafted - and their target conditions computed - on a context that did not happen: they are dropped
  and drafting restarts from the corrected context. Which step stops a round depends on that step and
  the earlier ones only, so it selects nothing about the steps kept. If every drafted step is kept, the
  bonus step is drawn from the target's conditions of the same pass.
* *Prefill.* Steps 0 .. floor(prefill * num_iter) run on the target alone (the official milestone rule
  step <= ratio * num_iter), where an empty context gives the draft little to agree on.

Why not FlowAR: its tokens come out of a deterministic ODE over a whole scale at once, with no last
Gaussian step to take a density ratio on (the exact density of an ODE's output needs the divergence
integral along the path), and the tokens of a scale are not independent given the coarser scales; it has
5 scales, too few to draft.

Images of a batch advance independently (each at its own step; a pass mixes rows of different steps),
so one image's rejection never costs another's accepted steps.

``variant="official"`` is MarkXCloud/CSpD's procedure: last reverse steps without noise (a draft token
is its Gaussian's mean, not a draw of it), verification every ``gamma`` steps (at step % gamma == 0 and
at the last) of all tokens drafted since, in one target step on the context before the chunk, with
the official acceptance (inner temperature 42, accumulated std ratio) and residual (at most 100
proposals, zeros after). Approximate: with exact acceptance it would sample the target on a
gamma-times coarser schedule (:func:`coarse_schedule`); its heuristic acceptance keeps most drafts.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from argen.errors import ConfigError
from argen.generators.protocol import ContinuousGenerator, generator_kind
from argen.samplers.ar import StepCallback
from argen.samplers.gaussian_spec import Gaussian, accept, official_accept_prob, official_residual, residual
from argen.samplers.logits import SamplingOptions
from argen.samplers.mar import _check, check_diffusion_steps, generation_orders, guidance_at, mask_lengths
from argen.samplers.stats import SamplerStats

VARIANTS = ("exact", "official")
# what a draft must share with its target: the token sequence it writes and the classes it is told
_SHARED = ("seq_len", "token_dim", "token_grid", "latent_grid", "num_classes")


def check_draft(model: ContinuousGenerator, draft: Any) -> None:
    """ConfigError naming the first difference that keeps ``draft`` from drafting for ``model``."""
    if draft is None:
        raise ConfigError("sampler 'cspd' needs a draft model: draft=<a zoo name, a folder or a loaded generator>")
    kind = generator_kind(draft)
    if kind != "continuous":
        raise ConfigError(f"cspd's draft must be a continuous-token (MAR) generator like its target, "
                          f"got a {kind!r} one ({type(draft).__name__})")
    for name in _SHARED:
        mine, theirs = getattr(model, name, None), getattr(draft, name, None)
        if mine != theirs:
            raise ConfigError(f"the draft's {name} is {theirs}, the target's {mine}: a draft must write the "
                              "target's token layout")
    dev, ddev = next(model.parameters()).device, next(draft.parameters()).device
    if dev != ddev:
        raise ConfigError(f"the draft is on {ddev}, the target on {dev}: put both on one device")


def prefill_steps(num_iter: int, prefill: float) -> int:
    """Steps the target takes alone: 0 .. floor(prefill * num_iter) (the official ``step <= milestone``)."""
    return min(num_iter, math.floor(num_iter * prefill) + 1)


def coarse_schedule(seq_len: int, num_iter: int, gamma: int, prefill: float = 0.15) -> list[int]:
    """The mask schedule the official variant verifies on: the fine cosine steps through the prefill,
    then one step per verified chunk (ending at steps k with k % gamma == 0, and the last). Pass it
    as ``schedule=`` to plain ``ar`` for the target alone at that schedule."""
    lefts = mask_lengths(seq_len, num_iter)
    first = prefill_steps(num_iter, prefill)
    return lefts[:first] + [left for k, left in enumerate(lefts[first:], first) if k % gamma == 0 or k == num_iter - 1]


def _check_options(gamma: Any, prefill: Any, variant: Any, temperature: float) -> None:
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise ConfigError(f"gamma (draft steps per verification) must be an integer >= 1, got {gamma!r}")
    if isinstance(prefill, bool) or not isinstance(prefill, (int, float)) or not 0.0 <= prefill < 1.0:
        raise ConfigError(f"prefill (the share of steps the target takes alone) must lie in [0, 1), got {prefill!r}")
    if variant not in VARIANTS:
        raise ConfigError(f"unknown cspd variant {variant!r}; known: {', '.join(VARIANTS)}")
    if not temperature > 0:
        raise ConfigError(f"cspd needs temperature > 0 (a token must be a draw of a density), got {temperature}")


@dataclass
class _Run:
    """What both variants share in one call: the schedule, the orders, and the chain noise of every token."""

    opts: SamplingOptions
    rng: torch.Generator | None
    seq_len: int
    steps: int  # the head's reverse steps
    lefts: list[int]
    rank: torch.Tensor  # (B, L): a position's index in its image's order (first = generated last)
    x_start: torch.Tensor  # (B, L, C) each token's initial chain noise, shared by draft and target
    noise: torch.Tensor  # (B, L, steps, C) each token's noise per reverse step (index 0: the last step)
    stats: SamplerStats

    def __post_init__(self) -> None:
        """Per-step tables, indexed by a tensor of steps: tokens masked before and after each step, its guidance."""
        dev = self.rank.device
        self._before = torch.tensor([self.seq_len] + self.lefts[:-1], device=dev)
        self._after = torch.tensor(self.lefts[:-1] + [0], device=dev)
        self._guidance = (None if self.opts.cfg_scale == 1.0 else
                          torch.tensor([guidance_at(self.opts, self.seq_len, left) for left in self.lefts], device=dev))

    @property
    def num_iter(self) -> int:
        return len(self.lefts)

    def before(self, step: torch.Tensor) -> torch.Tensor:
        """Tokens masked before each of ``step`` (R,)."""
        return self._before[step]

    def after(self, step: torch.Tensor) -> torch.Tensor:
        return self._after[step]

    def guidance(self, step: torch.Tensor) -> torch.Tensor | None:
        return None if self._guidance is None else self._guidance[step]

    def masks(self, images: torch.Tensor, first: torch.Tensor, last: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(unknown, to_predict) (R, L) for rows of ``images`` about to take steps ``first`` .. ``last``
        (one step when ``last`` is None)."""
        rank = self.rank[images]
        unknown = rank < self.before(first)[:, None]
        return unknown, unknown & (rank >= self.after(first if last is None else last)[:, None])


def _conditions(gen: ContinuousGenerator, emb: tuple[torch.Tensor, torch.Tensor | None], images: torch.Tensor,
                tokens: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
    """Per-token conditions (R, L, D), or (2, R, L, D) [cond ; uncond] under guidance."""
    cond, uncond = emb
    if uncond is None:
        return gen.conditions(tokens, unknown, cond[images])
    z = gen.conditions(torch.cat([tokens, tokens]), torch.cat([unknown, unknown]),
                       torch.cat([cond[images], uncond[images]]))
    return z.unflatten(0, (2, -1))


def _chain(gen: ContinuousGenerator, run: _Run, z: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
           images: torch.Tensor, step: torch.Tensor) -> tuple[Gaussian, torch.Tensor]:
    """The head's reverse chain down to its last step for the tokens at (rows, positions) of conditions z,
    on the tokens' shared noise: (the last step's Gaussian, temperature included; the sum of the
    earlier steps' log stds, the official ``fixed_term``'s ingredient)."""
    guided = z.dim() == 4
    zz = torch.cat([z[0][rows, positions], z[1][rows, positions]]) if guided else z[rows, positions]
    cfg = run.guidance(step[rows]) if guided else None
    x = run.x_start[images, positions]
    noise = run.noise[images, positions]
    temp = run.opts.temperature
    acc = torch.zeros_like(x)
    for i in range(run.steps - 1, 0, -1):
        mean, log_var = gen.step_gaussian(x, i, zz, cfg, run.steps)
        x = mean + torch.exp(0.5 * log_var) * noise[:, i] * temp
        acc += 0.5 * log_var
    mean, log_var = gen.step_gaussian(x, 0, zz, cfg, run.steps)
    return Gaussian(mean, 0.5 * log_var + math.log(temp)), acc


def _prefill(model: ContinuousGenerator, run: _Run, emb: tuple, tokens: torch.Tensor, count: int,
             final_noise: bool) -> None:
    """Steps 0 .. count - 1 on the target alone, every image at once."""
    b = tokens.shape[0]
    images = torch.arange(b, device=tokens.device)
    for k in range(count):
        step = torch.full((b,), k, device=tokens.device)
        unknown, to_pred = run.masks(images, step)
        z = _conditions(model, emb, images, tokens, unknown)
        rows, pos = to_pred.nonzero(as_tuple=True)
        p, _ = _chain(model, run, z, rows, pos, images[rows], step)
        tokens[rows, pos] = p.draw(run.noise[rows, pos, 0]) if final_noise else p.mean
        run.stats.forward_passes += 1
        run.stats.head_evaluations += run.steps
        run.stats.accepted_history.append(float(to_pred.sum()) / b)


def _stop_step(first_rejected: torch.Tensor, drafted: torch.Tensor) -> torch.Tensor:
    """The step that ends each image's round: its first drafted step with a rejected token (the later
    drafted steps' contexts did not happen), or ``drafted`` when none was rejected (the bonus step)."""
    return first_rejected


def _exact(model: ContinuousGenerator, draft: ContinuousGenerator, run: _Run, temb: tuple, demb: tuple,
           tokens: torch.Tensor, start: int, gamma: int, adaptive: bool, max_tries: int, bar: Any) -> None:
    """Rounds of up to ``gamma`` drafted steps, verified step by step, each image at its own step (module
    doc). ``adaptive``: an image drafts one step more than it kept in its last round (at most ``gamma``),
    so a draft that is seldom kept costs one draft pass per target pass instead of ``gamma``; the length
    depends on earlier rounds only, which keeps every step's draw exact."""
    b, k_total, dev = tokens.shape[0], run.num_iter, tokens.device
    stats = run.stats
    pos = torch.full((b,), start, device=dev)
    length = torch.full((b,), gamma, device=dev)
    while True:
        active = (pos < k_total).nonzero().squeeze(1)
        if active.numel() == 0:
            return
        at = pos[active]
        g = torch.minimum(k_total - at, length[active])
        work = tokens[active].clone()
        q_mean, q_log_std = torch.zeros_like(work), torch.zeros_like(work)
        for j in range(gamma):  # draft: step at + j for the images with that many steps left
            rows = (g > j).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            step = at[rows] + j
            unknown, to_pred = run.masks(active[rows], step)
            z = _conditions(draft, demb, active[rows], work[rows], unknown)
            r, p = to_pred.nonzero(as_tuple=True)
            q, _ = _chain(draft, run, z, r, p, active[rows][r], step)
            x = q.draw(torch.randn(q.mean.shape, device=dev, dtype=q.mean.dtype, generator=run.rng))
            work[rows[r], p] = x.to(work.dtype)
            q_mean[rows[r], p], q_log_std[rows[r], p] = q.mean.to(work.dtype), q.log_std.to(work.dtype)
            stats.draft_passes += 1
            stats.draft_head_evaluations += run.steps
        # verify: one target pass over rows (image, j), j = 0 .. g (j = g: the bonus step, where one is left)
        bonus = at + g < k_total
        counts = g + bonus.long()
        row_img = torch.repeat_interleave(torch.arange(active.numel(), device=dev), counts)
        row_j = torch.arange(row_img.numel(), device=dev) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        step = at[row_img] + row_j
        unknown, to_pred = run.masks(active[row_img], step)
        z = _conditions(model, temb, active[row_img], work[row_img], unknown)
        r, p = to_pred.nonzero(as_tuple=True)
        target, _ = _chain(model, run, z, r, p, active[row_img][r], step)
        stats.forward_passes += 1
        stats.head_evaluations += run.steps
        a, j = row_img[r], row_j[r]
        drafted = j < g[a]
        x = work[a, p]
        ok = torch.ones_like(drafted)
        q = Gaussian(q_mean[a, p][drafted], q_log_std[a, p][drafted])
        ok[drafted] = accept(x[drafted], Gaussian(target.mean[drafted], target.log_std[drafted]), q, run.rng)
        # the first drafted step of each image with a rejected token (g: none)
        bad_j = torch.where(ok, torch.full_like(j, gamma + 1), j)
        first = torch.full((active.numel(),), gamma + 1, device=dev).scatter_reduce(0, a, bad_j, "amin")
        first = _stop_step(torch.minimum(first, g), g)
        keep = j <= first[a]
        fix = keep & drafted & ~ok
        out = x.clone()
        if bool(fix.any()):
            draws, fallbacks = residual(Gaussian(target.mean[fix], target.log_std[fix]),
                                        Gaussian(q_mean[a, p][fix], q_log_std[a, p][fix]), run.rng, max_tries)
            out[fix] = draws.to(out.dtype)
            stats.residual_fallbacks += fallbacks
        new = keep & ~drafted  # the bonus step, where every drafted step was kept
        if bool(new.any()):
            bonus_p = Gaussian(target.mean[new], target.log_std[new])
            out[new] = bonus_p.draw(run.noise[active[a[new]], p[new], 0]).to(out.dtype)
        tokens[active[a[keep]], p[keep]] = out[keep]
        advance = torch.where((first < g) | bonus, first + 1, first)
        pos[active] = at + advance
        if adaptive:
            length[active] = (first + 1).clamp(1, gamma)
        stats.steps_drafted += int(torch.minimum(first + 1, g).sum())
        stats.steps_accepted += int(first.sum())
        verified = keep & drafted
        stats.tokens_drafted += int(verified.sum())
        stats.tokens_accepted += int((verified & ok).sum())
        for n in advance.tolist():
            while len(stats.accept_histogram) <= n:
                stats.accept_histogram.append(0)
            stats.accept_histogram[n] += 1
        stats.accepted_history.append(float(advance.float().mean()))
        bar.update(int(pos.min()) - bar.n)


def _official(model: ContinuousGenerator, draft: ContinuousGenerator, run: _Run, temb: tuple, demb: tuple,
              tokens: torch.Tensor, start: int, gamma: int, inner_temperature: float, bar: Any) -> None:
    """The official loop: a draft step per step, the chunk since the last verification verified at
    steps k % gamma == 0 and at the last, in one target step on the context before the chunk."""
    b, k_total, dev = tokens.shape[0], run.num_iter, tokens.device
    stats = run.stats
    images = torch.arange(b, device=dev)
    q_mean, q_log_std, q_acc = (torch.zeros_like(tokens) for _ in range(3))
    chunk = start
    for k in range(start, k_total):
        step = torch.full((b,), k, device=dev)
        unknown, to_pred = run.masks(images, step)
        z = _conditions(draft, demb, images, tokens, unknown)
        r, p = to_pred.nonzero(as_tuple=True)
        q, acc = _chain(draft, run, z, r, p, r, step)
        tokens[r, p] = q.mean.to(tokens.dtype)  # the official last step adds no noise
        q_mean[r, p], q_log_std[r, p], q_acc[r, p] = q.mean, q.log_std, acc
        stats.draft_passes += 1
        stats.draft_head_evaluations += run.steps
        if k % gamma and k != k_total - 1:
            continue
        first = torch.full((b,), chunk, device=dev)
        unknown, to_pred = run.masks(images, first, step)
        z = _conditions(model, temb, images, tokens, unknown)
        r, p = to_pred.nonzero(as_tuple=True)
        # the official verification step's guidance is the chunk's last step's
        target, t_acc = _chain(model, run, z, r, p, r, step)
        stats.forward_passes += 1
        stats.head_evaluations += run.steps
        q = Gaussian(q_mean[r, p], q_log_std[r, p])
        x = tokens[r, p]
        prob = official_accept_prob(x, target, q, t_acc, q_acc[r, p], inner_temperature)
        ok = prob > torch.rand(prob.shape, device=dev, generator=run.rng, dtype=prob.dtype)
        if not bool(ok.all()):
            bad = ~ok
            draws, zeros = official_residual(Gaussian(target.mean[bad], target.log_std[bad]),
                                             Gaussian(q.mean[bad], q.log_std[bad]), t_acc[bad], q_acc[r, p][bad],
                                             run.rng)
            tokens[r[bad], p[bad]] = draws.to(tokens.dtype)
            stats.residual_fallbacks += zeros
        stats.tokens_drafted += int(ok.numel())
        stats.tokens_accepted += int(ok.sum())
        stats.steps_drafted += k - chunk + 1
        stats.accepted_history.append(float(ok.numel()) / b)
        chunk = k + 1
        bar.update(k + 1 - bar.n)


def sample_cspd(
    model: ContinuousGenerator,
    cond: torch.Tensor,
    opts: SamplingOptions,
    rng: torch.Generator | None,
    *,
    draft: ContinuousGenerator | None = None,
    gamma: int = 4,
    prefill: float = 0.15,
    variant: str = "exact",
    adaptive: bool = True,
    num_iter: int | None = None,
    diffusion_steps: int | None = None,
    order: str = "random",
    inner_temperature: float = 42.0,
    max_residual_tries: int = 10_000,
    progress: bool = False,
    callback: StepCallback | None = None,
    callback_every: int = 1,
) -> tuple[torch.Tensor, SamplerStats]:
    """Tokens (B, L, C) for class ids ``cond`` with ``draft`` proposing ``gamma`` steps per target pass.
    ``variant`` 'exact' (the distribution of ``ar`` with ``final_noise=True``) or 'official'
    (MarkXCloud/CSpD's approximate procedure; ``inner_temperature`` is its acceptance temperature).
    ``adaptive`` (exact): each image drafts one step more than it kept last round, ``gamma`` at most.
    ``num_iter``, ``diffusion_steps`` (both models' reverse steps: the chains share their noise),
    ``order``: as plain ``ar``. Stats: ``forward_passes`` counts the target's sequential passes,
    ``draft_passes`` the draft's; acceptance per drafted step and per token. ``callback(step, tokens)``
    once at the end (images advance at their own pace)."""
    start_time = time.perf_counter()
    b, n, dim = cond.shape[0], model.seq_len, model.token_dim
    check_draft(model, draft)
    _check_options(gamma, prefill, variant, opts.temperature)
    num_iter = min(64, n) if num_iter is None else num_iter
    _check(opts, num_iter, n, order)
    steps = check_diffusion_steps(model, diffusion_steps)
    for name, value in (("inner_temperature", inner_temperature), ("max_residual_tries", max_residual_tries)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value!r}")
    guided = opts.cfg_scale != 1.0
    temb_c = model.class_embedding(cond)
    dev, dtype = temb_c.device, temb_c.dtype
    temb = (temb_c, model.class_embedding(None, b) if guided else None)
    demb = (draft.class_embedding(cond), draft.class_embedding(None, b) if guided else None)
    orders = generation_orders(model, b, order, rng, dev)
    rank = torch.empty_like(orders).scatter_(1, orders, torch.arange(n, device=dev).expand(b, -1))
    x_start = torch.randn(b, n, dim, device=dev, dtype=dtype, generator=rng)
    noise = torch.randn(b, n, steps, dim, device=dev, dtype=dtype, generator=rng)
    stats = SamplerStats("cspd", b, n, guided_rows=2 * b if guided else b)
    run = _Run(opts, rng, n, steps, mask_lengths(n, num_iter), rank, x_start, noise, stats)
    tokens = torch.zeros(b, n, dim, device=dev, dtype=dtype)
    first = prefill_steps(num_iter, prefill)
    with tqdm(total=num_iter, disable=not progress, desc=f"cspd ({variant})", leave=False) as bar:
        _prefill(model, run, temb, tokens, first, final_noise=variant == "exact")
        bar.update(first)
        if variant == "exact":
            _exact(model, draft, run, temb, demb, tokens, first, gamma, bool(adaptive), int(max_residual_tries), bar)
        else:
            _official(model, draft, run, temb, demb, tokens, first, gamma, float(inner_temperature), bar)
    if callback is not None:
        callback(num_iter, tokens)
    stats.wall_time_s = time.perf_counter() - start_time
    return tokens, stats
