"""argen.samplers: every sampler behind one entry point, :func:`sample`.

    codes, stats = argen.samplers.sample(model, classes=[207, 360], sampler="ar", seed=0,
                                         cfg_scale=4.0, top_k=2000)

Samplers register by name with the generator kinds they support; logit processing (CFG, temperature,
top-k, top-p) lives once in :mod:`argen.samplers.logits`.
"""
from __future__ import annotations

import inspect
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from argen.errors import ConfigError
from argen.samplers.ar import sample_ar
from argen.samplers.flowar import sample_flowar
from argen.samplers.logits import SamplingOptions, draw, guide, process_logits, token_probs
from argen.samplers.mar import sample_mar
from argen.samplers.scales import sample_scales
from argen.samplers.sjd import sample_sjd
from argen.samplers.stats import SamplerStats


@dataclass(frozen=True)
class SamplerSpec:
    fns: dict[str, Callable[..., tuple[torch.Tensor, SamplerStats]]]  # generator kind -> implementation
    description: str

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.fns)


SAMPLERS: dict[str, SamplerSpec] = {
    "ar": SamplerSpec(
        {"token": sample_ar, "scale": sample_scales, "continuous": sample_mar, "flow-scale": sample_flowar},
        "plain autoregressive decoding: token by token or scale by scale with a KV cache, or MAR's masked "
        "iterations with a diffusion head per token",
    ),
    "sjd": SamplerSpec(
        {"token": sample_sjd},
        "speculative Jacobi decoding: a window of drafts verified per pass, same distribution as ar",
    ),
}

_COMMON = {"progress", "callback", "callback_every"}


def register_sampler(name: str, fn: Callable, kinds: Sequence[str], description: str = "") -> None:
    """Register ``fn`` as sampler ``name`` for the given generator kinds (adds to an existing name)."""
    old = SAMPLERS.get(name)
    fns = {**(old.fns if old else {}), **{k: fn for k in kinds}}
    SAMPLERS[name] = SamplerSpec(fns, description or (old.description if old else ""))


def samplers_for(model: Any) -> list[str]:
    """Names of the samplers that can drive ``model``."""
    return [n for n, s in SAMPLERS.items() if getattr(model, "kind", None) in s.kinds]


def make_rng(seed: int | None, device: torch.device | str) -> tuple[torch.Generator, int]:
    """A generator on ``device`` seeded with ``seed`` (a fresh random seed, recorded, when None)."""
    if seed is None:
        seed = secrets.randbits(63)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed), seed


def sample(
    model: Any,
    classes: Any,
    sampler: str = "ar",
    seed: int | None = None,
    cfg_scale: float = 1.0,
    cfg_interval: int = -1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    *,
    cfg_schedule: str | None = None,
    top_p_rule: str | None = None,
    generator: torch.Generator | None = None,
    **sampler_options: Any,
) -> tuple[torch.Tensor, SamplerStats]:
    """Sample codes for ``classes`` (a list/tensor of class ids, or t2i caption features).

    Returns (codes, stats): codes (B, N) int64 (scale-wise models: all scales, flat, in scale order;
    continuous-token models: tokens (B, N, C) float).
    ``generator`` overrides ``seed``. ``cfg_schedule`` / ``top_p_rule`` default to the model's own
    conventions (``model.sampling_conventions``; LlamaGen: constant / hf, VAR: var / var).
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; available: {', '.join(SAMPLERS)}")
    spec = SAMPLERS[sampler]
    kind = getattr(model, "kind", None)
    if kind not in spec.kinds:
        raise ConfigError(
            f"sampler {sampler!r} cannot drive a {kind!r} model; samplers for it: {', '.join(samplers_for(model)) or 'none'}"
        )
    fn = spec.fns[kind]
    valid = (set(inspect.signature(fn).parameters) - {"model", "cond", "opts", "rng"}) | _COMMON
    unknown = sorted(set(sampler_options) - valid)
    if unknown:
        raise ConfigError(f"unknown option(s) for sampler {sampler!r}: {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    conventions = getattr(model, "sampling_conventions", {})
    opts = SamplingOptions(
        cfg_scale, cfg_interval, cfg_schedule or conventions.get("cfg_schedule", "constant"), temperature, top_k,
        top_p, greedy, top_p_rule or conventions.get("top_p_rule", "hf"),
    )
    cond = model.check_condition(classes)
    if cond.shape[0] == 0:
        raise ConfigError("no classes given: nothing to generate")
    device = next(model.parameters()).device
    used_seed = None
    if generator is None:
        generator, used_seed = make_rng(seed, device)
    with torch.inference_mode():
        codes, stats = fn(model, cond, opts, generator, **sampler_options)
    stats.seed = used_seed
    return codes, stats


__all__ = [
    "SAMPLERS",
    "SamplerSpec",
    "SamplerStats",
    "SamplingOptions",
    "draw",
    "guide",
    "make_rng",
    "process_logits",
    "register_sampler",
    "sample",
    "samplers_for",
    "token_probs",
]
