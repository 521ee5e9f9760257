"""Logit processing shared by every sampler: options, classifier-free guidance, temperature, top-k,
top-p, greedy, and drawing tokens with a seeded ``torch.Generator``.

Semantics follow the official LlamaGen ``generate.py``: CFG batch is [conditional ; unconditional],
guided logits = uncond + (cond - uncond) * scale, guidance only when cfg_scale > 1.0, ``cfg_interval``
stops guidance after a number of decode steps; logits are divided by max(temperature, 1e-5), then
top-k (ties at the k-th value kept), then top-p on the top-k-filtered logits (HF style: the token that
crosses the threshold is kept), softmax, multinomial.

VAR's conventions are options of the same code (a model declares its defaults in
``sampling_conventions``): ``cfg_schedule="var"`` guides step k of K with (1 + t) cond - t uncond,
t = cfg_scale * k / (K - 1), so cfg 0 is unguided and cfg 1 still guides; ``top_p_rule="var"`` removes
the tokens whose ascending cumulative probability is <= 1 - top_p.

ELM's ramps (``linear``, ``cos``, ``log``, ``square``, ``square_root``) are 1 + (cfg - 1) f(r) of the
progress r through the sequence; where r is read is a convention too (``cfg_progress``): "span",
r = index / (total - 1), from 0 at the first token to 1 at the last; "elm", the official
``generate_cfg``'s r = (index + 1) / total (index / total under the square root), computed with
numpy's functions as the official loop, so the scales are bitwise its.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from argen.errors import ConfigError
from argen.samplers.rng import Rng, multinomial

# ramp f(r) of the guidance 1 + (cfg - 1) f(r); r in [0, 1] is the progress (cfg_progress)
RAMPS = {
    "linear": lambda r: r,
    "cos": lambda r: np.cos(-np.pi / 2 + r * (np.pi / 2)),
    "log": lambda r: np.log1p(r * (np.e - 1.0)) / np.log1p(np.e - 1.0),
    "square": lambda r: r**2,
    "square_root": lambda r: r**0.5,
}
CFG_SCHEDULES = ("constant", *RAMPS, "var")
CFG_PROGRESS = ("span", "elm")
TOP_P_RULES = ("hf", "var")


@dataclass(frozen=True)
class SamplingOptions:
    """What every sampler takes. ``cfg_scale`` <= 1 means no guidance (official semantics);
    ``cfg_interval`` = -1 guides every token, k >= 0 guides tokens 0..k+1 only; ``cfg_schedule``
    'linear' ramps the scale from 1 at the first token to ``cfg_scale`` at the last (cos, log, square,
    square_root: other ramps; ``cfg_progress`` says how the progress is counted), 'var' from 1 to
    1 + ``cfg_scale`` (guided whenever cfg_scale > 0). ``top_p_rule``: 'hf' or 'var' (see module doc)."""

    cfg_scale: float = 1.0
    cfg_interval: int = -1
    cfg_schedule: str = "constant"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    top_p_rule: str = "hf"
    cfg_progress: str = "span"

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
            raise ConfigError(f"top_p must lie in (0, 1] (1 = off; official VAR's top_p=0 is 1 here), got {p!r}")
        if self.top_p_rule not in TOP_P_RULES:
            raise ConfigError(f"top_p_rule must be one of {', '.join(TOP_P_RULES)}, got {self.top_p_rule!r}")
        if self.cfg_progress not in CFG_PROGRESS:
            raise ConfigError(f"cfg_progress must be one of {', '.join(CFG_PROGRESS)}, got {self.cfg_progress!r}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale > (0.0 if self.cfg_schedule == "var" else 1.0)

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    def scale_at(self, index: int, total: int) -> float | None:
        """Guidance scale for token ``index`` of ``total``, or None where no guidance applies."""
        if not self.guided or (self.cfg_interval > -1 and index > self.cfg_interval + 1):
            return None
        if self.cfg_schedule == "var":
            return 1.0 + self.cfg_scale * (index / max(total - 1, 1))
        if self.cfg_schedule in RAMPS:
            return float(1.0 + (self.cfg_scale - 1.0) * RAMPS[self.cfg_schedule](self.progress(index, total)))
        return float(self.cfg_scale)

    def progress(self, index: int, total: int) -> float:
        """How far token ``index`` of ``total`` is through the sequence, for the ramps (``cfg_progress``)."""
        if self.cfg_progress == "elm":
            return (index + (self.cfg_schedule != "square_root")) / total
        return index / max(total - 1, 1)

    def scales_at(self, index: torch.Tensor, total: int) -> torch.Tensor:
        """``scale_at`` for a tensor of token indices: float32 scales, NaN where no guidance applies."""
        table = [self.scale_at(i, total) for i in range(int(index.max()) + 1)]
        table_t = torch.tensor([float("nan") if s is None else s for s in table], device=index.device)
        return table_t[index]

    def as_dict(self) -> dict:
        return asdict(self)

    def check_continuous(self, family: str, schedules: tuple[str, ...], temperature: bool = True) -> None:
        """Samplers of continuous tokens draw from no logits: top-k / top-p / greedy (and, where the
        model has no noise to scale, temperature) are errors, and only ``schedules`` are valid."""
        bad = [n for n, on in (("top_k", self.top_k), ("top_p", self.top_p < 1.0), ("greedy", self.greedy),
                               ("temperature", not temperature and self.temperature != 1.0)) if on]
        if bad:
            raise ConfigError(f"{' / '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply to {family}'s "
                              "continuous tokens; it samples with "
                              f"cfg_scale, cfg_schedule{', temperature' if temperature else ''} "
                              "and its own step options")
        if self.cfg_schedule not in schedules:
            raise ConfigError(f"{family}'s cfg_schedule is one of {', '.join(schedules)}, got {self.cfg_schedule!r}")


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, extrapolate: bool = False) -> torch.Tensor:
    """Classifier-free guidance on logits, in the official order of operations: LlamaGen's
    uncond + (cond - uncond) * scale, or (``extrapolate``, VAR's) scale * cond - (scale - 1) * uncond."""
    if extrapolate:
        return scale * cond - (scale - 1.0) * uncond
    return uncond + (cond - uncond) * scale


def split_guided(logits: torch.Tensor, scale: float | None, extrapolate: bool = False) -> torch.Tensor:
    """Combine a [cond ; uncond] batch of logits with ``scale`` (None: take the conditional half)."""
    cond, uncond = logits.chunk(2, dim=0)
    return cond if scale is None else guide(cond, uncond, scale, extrapolate)


def guide_at(logits: torch.Tensor, index: torch.Tensor, opts: SamplingOptions, total: int) -> torch.Tensor:
    """[cond ; uncond] logits (2B, W, ..., V) of the tokens at ``index`` (B, W) -> (B, W, ..., V), each token
    guided with its own scale (``opts.scale_at``; the conditional half where none applies). Constant
    guidance takes the same path as :func:`split_guided`, so the values are bitwise those of AR."""
    if opts.cfg_schedule == "constant" and opts.cfg_interval == -1:
        return split_guided(logits, opts.scale_at(0, total))
    cond, uncond = logits.chunk(2, dim=0)
    scale = opts.scales_at(index, total).view(*index.shape, *[1] * (logits.dim() - index.dim()))
    off = scale.isnan()
    guided = guide(cond, uncond, scale.nan_to_num(1.0), opts.cfg_schedule == "var")
    return torch.where(off, cond, guided)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep every logit >= the k-th largest (ties kept); others -inf. k <= 0 or >= vocab: no-op."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float, rule: str = "hf") -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose mass reaches ``p`` (the
    token that crosses the threshold is kept; the most likely token always is). ``rule="var"``:
    VAR's computation (ascending cumulative mass <= 1 - p removed), which differs at the boundary."""
    if p >= 1.0:
        return logits
    if rule == "var":
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - p)
        remove[..., -1] = False
        return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
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
    return top_p_filter(logits, opts.top_p, opts.top_p_rule)


def token_probs(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """The distribution a sampler draws from (after temperature / top-k / top-p)."""
    return process_logits(logits, opts).softmax(dim=-1)


def target_probs(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """The exact distribution :func:`draw` samples from, as probabilities (..., V): one-hot at the
    argmax when greedy. Speculative samplers verify drafts against it."""
    if opts.is_greedy:
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    return token_probs(logits, opts)


def draw_position(logits: torch.Tensor, opts: SamplingOptions, rng: Rng) -> torch.Tensor:
    """One position per row: logits (B, *token_shape, V) -> ids (B, *token_shape). Sub-tokens (ELM's heads)
    are drawn independently, head by head over the batch: the official loop's order of draws."""
    if logits.dim() <= 2:
        return draw(logits, opts, rng)
    heads = logits.flatten(1, -2)
    ids = [draw(heads[:, g], opts, rng) for g in range(heads.shape[1])]
    return torch.stack(ids, dim=1).view(logits.shape[:-1])


def draw(logits: torch.Tensor, opts: SamplingOptions, rng: Rng) -> torch.Tensor:
    """One token per row of ``logits`` (..., V) -> ids (...) int64 (per-image streams: see
    :mod:`argen.samplers.rng`)."""
    if opts.is_greedy:
        return logits.argmax(dim=-1)
    flat = logits.reshape(-1, logits.shape[-1])
    return multinomial(token_probs(flat, opts).view(logits.shape), rng)
