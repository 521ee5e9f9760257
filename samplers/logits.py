"""Logit processing shared by every sampler: options, classifier-free guidance, temperature, top-k,
top-p, greedy, and drawing tokens with a seeded ``torch.Generator``.

Semantics follow the official LlamaGen ``generate.py``: CFG batch is [conditional ; unconditional],
guided logits = uncond + (cond - uncond) * scale, guidance only when cfg_scale > 1.0, ``cfg_interval``
stops guidance after a number of decode steps; logits are divided by max(temperature, 1e-5), then
top-k (ties at the k-th value kept), then top-p on the top-k-filtered logits (HF style: the token that
crosses the threshold is kept), softmax, multinomial.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from argen.errors import ConfigError

CFG_SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class SamplingOptions:
    """What every sampler takes. ``cfg_scale`` <= 1 means no guidance (official semantics);
    ``cfg_interval`` = -1 guides every token, k >= 0 guides tokens 0..k+1 only; ``cfg_schedule``
    'linear' ramps the scale from 1 at the first token to ``cfg_scale`` at the last."""

    cfg_scale: float = 1.0
    cfg_interval: int = -1
    cfg_schedule: str = "constant"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.cfg_scale, (int, float)) or not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise ConfigError(f"cfg_scale must be a finite number >= 0, got {self.cfg_scale!r}")
        if not isinstance(self.cfg_interval, int) or self.cfg_interval < -1:
            raise ConfigError(f"cfg_interval must be an integer >= -1 (-1 = always guide), got {self.cfg_interval!r}")
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ConfigError(f"cfg_schedule must be one of {', '.join(CFG_SCHEDULES)}, got {self.cfg_schedule!r}")
        t = self.temperature
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"temperature must be a finite number >= 0, got {t!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        p = self.top_p
        if not isinstance(p, (int, float)) or not (0 < p <= 1):
            raise ConfigError(f"top_p must lie in (0, 1] (1 = off), got {p!r}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale > 1.0

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    def scale_at(self, index: int, total: int) -> float | None:
        """Guidance scale for token ``index`` of ``total``, or None where no guidance applies."""
        if not self.guided or (self.cfg_interval > -1 and index > self.cfg_interval + 1):
            return None
        if self.cfg_schedule == "linear":
            return 1.0 + (self.cfg_scale - 1.0) * index / max(total - 1, 1)
        return float(self.cfg_scale)

    def as_dict(self) -> dict:
        return asdict(self)


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits, in the official order of operations."""
    return uncond + (cond - uncond) * scale


def split_guided(logits: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Combine a [cond ; uncond] batch of logits with ``scale`` (None: take the conditional half)."""
    cond, uncond = logits.chunk(2, dim=0)
    return cond if scale is None else guide(cond, uncond, scale)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep every logit >= the k-th largest (ties kept); others -inf. k <= 0 or >= vocab: no-op."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose mass reaches ``p`` (the
    token that crosses the threshold is kept; the most likely token always is)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum > p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def process_logits(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """Temperature, top-k, top-p on float32 logits (B, V) -> filtered logits."""
    logits = logits.float() / max(opts.temperature, 1e-5)
    logits = top_k_filter(logits, opts.top_k)
    return top_p_filter(logits, opts.top_p)


def token_probs(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """The distribution a sampler draws from (after temperature / top-k / top-p)."""
    return process_logits(logits, opts).softmax(dim=-1)


def draw(logits: torch.Tensor, opts: SamplingOptions, rng: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``logits`` (..., V) -> ids (...) int64."""
    flat = logits.reshape(-1, logits.shape[-1])
    if opts.is_greedy:
        ids = flat.argmax(dim=-1)
    else:
        ids = torch.multinomial(token_probs(flat, opts), 1, generator=rng).squeeze(-1)
    return ids.view(logits.shape[:-1])
