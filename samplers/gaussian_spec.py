"""Speculative sampling between two diagonal Gaussians: the verification step of continuous speculative
decoding (CSpD), where each token's density is the Gaussian of its diffusion head's last reverse step.

Exact rule (Leviathan et al.'s, for densities): a draft token x ~ q is kept with probability
min(1, p(x) / q(x)); otherwise the output is a draw from the residual r = (p - q)+ / (1 - alpha), alpha =
1 - TV(p, q). The output is then distributed as p. The residual has no closed form; it is sampled by
rejection from p: y ~ p is kept with probability (1 - q(y) / p(y))+, since r <= p / (1 - alpha).

The official MarkXCloud/CSpD rule (:func:`official_accept_prob`, :func:`official_residual`) is here too,
written from its formulas, so that argen can reproduce it and show what it samples.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

_LOG_2PI = math.log(2.0 * math.pi)


class Gaussian(NamedTuple):
    """A diagonal Gaussian per token: mean and log standard deviation, both (N, C)."""

    mean: torch.Tensor
    log_std: torch.Tensor

    def draw(self, noise: torch.Tensor) -> torch.Tensor:
        return self.mean + torch.exp(self.log_std) * noise

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) log density at x (N, C), in float64 (token widths of 16 channels with std ~ 0.01 put float32
        densities near its range)."""
        z = (x.double() - self.mean.double()) * torch.exp(-self.log_std.double())
        return (-0.5 * z.pow(2) - self.log_std.double() - 0.5 * _LOG_2PI).sum(-1)


def _uniform(n: int, like: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=like.device, generator=rng, dtype=torch.float64)


def _normal(like: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, device=like.device, generator=rng, dtype=like.dtype)


def accept(x: torch.Tensor, target: Gaussian, draft: Gaussian, rng: torch.Generator | None) -> torch.Tensor:
    """(N,) bool: keep draft token x (a draw of ``draft``) with probability min(1, p(x) / q(x))."""
    log_ratio = target.log_density(x) - draft.log_density(x)
    return torch.log(_uniform(x.shape[0], x, rng)) < log_ratio


def residual(target: Gaussian, draft: Gaussian, rng: torch.Generator | None,
             max_tries: int = 10_000) -> tuple[torch.Tensor, int]:
    """One draw per token from (p - q)+ normalised, by rejection from p. Returns (draws, fallbacks):
    a token still without a draw after ``max_tries`` proposals takes a draw of p instead (counted; it
    happens with probability (1 - TV)^max_tries given a rejection, so only when p and q nearly coincide,
    where p and the residual differ least in what they change of the output)."""
    out = torch.empty_like(target.mean)
    todo = torch.arange(target.mean.shape[0], device=target.mean.device)
    for _ in range(max_tries):
        if todo.numel() == 0:
            return out, 0
        p, q = Gaussian(target.mean[todo], target.log_std[todo]), Gaussian(draft.mean[todo], draft.log_std[todo])
        y = p.draw(_normal(p.mean, rng))
        # keep with probability 1 - q(y)/p(y) where positive: log u < log(1 - exp(log q - log p))
        d = (q.log_density(y) - p.log_density(y)).clamp(max=0.0)
        keep_log = torch.log(-torch.expm1(d))
        keep = torch.log(_uniform(y.shape[0], y, rng)) < keep_log
        out[todo[keep]] = y[keep]
        todo = todo[~keep]
    left = todo.numel()
    if left:
        p = Gaussian(target.mean[todo], target.log_std[todo])
        out[todo] = p.draw(_normal(p.mean, rng))
    return out, left


def acceptance_rate(target: Gaussian, draft: Gaussian) -> torch.Tensor:
    """Closed form 1 - TV for equal-variance 1-D Gaussians (per token): 2 Phi(-|mu_p - mu_q| / (2 sigma)).
    The test reference of :func:`accept`."""
    sigma = torch.exp(target.log_std.double())
    gap = (target.mean.double() - draft.mean.double()).abs() / (2.0 * sigma)
    return (2.0 * torch.special.ndtr(-gap)).squeeze(-1)


# -- the official MarkXCloud/CSpD rule ------------------------------------------------------------------------
def official_accept_prob(x: torch.Tensor, target: Gaussian, draft: Gaussian, target_chain_log_std: torch.Tensor,
                         draft_chain_log_std: torch.Tensor, inner_temperature: float) -> torch.Tensor:
    """The official ``judge_accept`` (kept when it exceeds a uniform): unnormalised Gaussians whose
    standardised residuals are divided by ``inner_temperature`` (42), times the ratio of the two chains'
    accumulated standard deviations over the earlier reverse steps (``fixed_term``), times the last
    steps' std ratio. Not a density ratio; computed in log space (the same values where the official
    float32 products are finite)."""
    zp = ((x - target.mean) * torch.exp(-target.log_std) / inner_temperature).double()
    zq = ((x - draft.mean) * torch.exp(-draft.log_std) / inner_temperature).double()
    log_prob = (-0.5 * zp.pow(2) + 0.5 * zq.pow(2)).sum(-1)
    log_prob += (target_chain_log_std - draft_chain_log_std).double().sum(-1)
    log_prob += (draft.log_std - target.log_std).double().sum(-1)
    return torch.exp(log_prob)


def official_residual(target: Gaussian, draft: Gaussian, target_chain_log_std: torch.Tensor,
                      draft_chain_log_std: torch.Tensor, rng: torch.Generator | None,
                      tries: int = 100) -> tuple[torch.Tensor, int]:
    """The official ``sample_distribution``: proposals y ~ p kept with probability
    (p(y) - q(y) / fixed_term)+ / p(y), at most ``tries`` (100) rounds; a token never kept stays 0 (the
    official's zeros). Returns (draws, tokens left at zero)."""
    out = torch.zeros_like(target.mean)
    done = torch.zeros(target.mean.shape[0], dtype=torch.bool, device=out.device)
    log_fixed = (target_chain_log_std - draft_chain_log_std).double().sum(-1)
    for _ in range(tries):
        y = target.draw(_normal(target.mean, rng))
        alpha = (1.0 - torch.exp(draft.log_density(y) - log_fixed - target.log_density(y))).clamp(min=0.0)
        keep = _uniform(y.shape[0], y, rng) < alpha
        out[keep] = y[keep]  # the official overwrites an earlier kept draw with a later one
        done |= keep
        if bool(done.all()):
            break
    return out, int((~done).sum())
