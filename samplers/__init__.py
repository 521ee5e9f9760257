"""argen.samplers: every sampler behind one entry point, :func:`sample`.

    codes, stats = argen.samplers.sample(model, classes=[207, 360], sampler="ar", seed=0,
                                         cfg_scale=4.0, top_k=2000)

Samplers register by name with the generator kinds they support; a kind names the protocol a sampler
may call (:mod:`argen.generators.protocol`), so a sampler drives every generator of its kinds. Logit
processing (CFG, temperature, top-k, top-p) lives once in :mod:`argen.samplers.logits`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from argen.errors import ConfigError
from argen.generators.protocol import Generator, generator_kind, protocol_for
from argen.samplers.ar import sample_ar
from argen.samplers.cspd import sample_cspd
from argen.samplers.dd import sample_dd
from argen.samplers.flow import sample_flow_scales, sample_flow_tokens
from argen.samplers.flowar import sample_flowar
from argen.samplers.logits import SamplingOptions, draw, guide, process_logits, token_probs
from argen.samplers.mar import sample_mar
from argen.samplers.mask import sample_mask
from argen.samplers.rng import RowStreams, check_seed, derive_seed, make_rng
from argen.samplers.scales import sample_scales
from argen.samplers.sjd import sample_sjd
from argen.samplers.stats import SamplerStats


@dataclass(frozen=True)
class SamplerSpec:
    fns: dict[str, Callable[..., tuple[torch.Tensor, SamplerStats]]]  # generator kind -> implementation
    description: str
    # kinds whose implementation takes per-image streams (argen.samplers.rng.RowStreams): an image then
    # does not depend on the other images of its batch
    row_streams: frozenset[str] = frozenset()
    # options that name a second model the sampler works with (cspd's draft), and whether it needs one
    model_options: tuple[str, ...] = ()
    needs_model: bool = False
    # what a model of a listed kind must also offer: model -> None, or why this sampler cannot drive it
    refuses: Callable[[Any], str | None] | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.fns)


SAMPLERS: dict[str, SamplerSpec] = {
    "ar": SamplerSpec(
        {"token": sample_ar, "scale": sample_scales, "continuous": sample_mar, "flow-scale": sample_flowar},
        "plain autoregressive decoding: token by token or scale by scale with a KV cache, or MAR's masked "
        "iterations with a diffusion head per token",
        row_streams=frozenset({"token", "scale"}),
    ),
    "sjd": SamplerSpec(
        {"token": sample_sjd},
        "speculative Jacobi decoding: a window of drafts verified per pass, same distribution as ar",
    ),
    "flow": SamplerSpec(
        {"token": sample_flow_tokens, "scale": sample_flow_scales},
        "the noise -> token flow of distilled decoding: deterministic given the noise, same distribution as ar",
        row_streams=frozenset({"token", "scale"}),
        refuses=lambda m: ("it flows to one code vector per position, and this model's positions hold "
                           f"{m.token_shape[0]} sub-tokens") if getattr(m, "token_shape", ()) else None,
    ),
    "cspd": SamplerSpec(
        {"continuous": sample_cspd},
        "continuous speculative decoding: a draft MAR proposes gamma steps, the target verifies them in one pass "
        "(exact: the distribution of ar with final_noise=True; official: MarkXCloud/CSpD's approximation)",
        model_options=("draft",),
        needs_model=True,
    ),
    "dd": SamplerSpec(
        {"distilled": sample_dd},
        "distilled decoding: a student maps noise to the whole sequence in one pass per step (1 or 2 steps)",
        row_streams=frozenset({"distilled"}),
        model_options=("teacher",),
    ),
    "mask": SamplerSpec(
        {"masked": sample_mask},
        "MaskGIT-style parallel decoding: all positions drawn per pass, the least confident masked again on a "
        "cosine schedule (ELM's MLM)",
        row_streams=frozenset({"masked"}),
    ),
}

_COMMON = {"progress", "callback", "callback_every"}


def register_sampler(
    name: str, fn: Callable, kinds: Sequence[str], description: str = "", *, row_streams: bool = False
) -> None:
    """Register ``fn`` as sampler ``name`` for the given generator kinds (adds to an existing name).
    ``fn`` calls only the kinds' protocols (:mod:`argen.generators.protocol`). ``row_streams``: ``fn``
    draws only through :mod:`argen.samplers.rng`, so it takes per-image streams."""
    for kind in kinds:
        protocol_for(kind)
    old = SAMPLERS.get(name)
    fns = {**(old.fns if old else {}), **{k: fn for k in kinds}}
    rows = (old.row_streams - set(kinds) if old else frozenset()) | (frozenset(kinds) if row_streams else frozenset())
    SAMPLERS[name] = SamplerSpec(fns, description or (old.description if old else ""), frozenset(rows),
                                 old.model_options if old else (), old.needs_model if old else False)


def model_options(sampler: str) -> tuple[str, ...]:
    """The options of ``sampler`` that name a second model (a pipeline resolves zoo names and folders)."""
    spec = SAMPLERS.get(sampler)
    return spec.model_options if spec is not None else ()


def takes_row_streams(sampler: str, model: Generator) -> bool:
    """Whether ``sampler`` gives ``model``'s images independently of their batch (per-image streams)."""
    spec = SAMPLERS.get(sampler)
    return spec is not None and generator_kind(model) in spec.row_streams


def samplers_for(model: Generator) -> list[str]:
    """Names of the samplers that can drive ``model``."""
    kind = generator_kind(model)
    return [n for n, s in SAMPLERS.items() if kind in s.kinds and not (s.refuses and s.refuses(model))]


def default_sampler(model: Generator) -> str:
    """The sampler a model gets when none is named: the first registered for its kind (``ar``; ``dd`` for students)."""
    names = samplers_for(model)
    if not names:
        raise ConfigError(f"no sampler drives a {generator_kind(model)!r} model")
    return names[0]


def sample(
    model: Generator,
    classes: Any,
    sampler: str | None = None,
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
    generator: torch.Generator | RowStreams | None = None,
    **sampler_options: Any,
) -> tuple[torch.Tensor, SamplerStats]:
    """Sample codes for ``classes`` (a list/tensor of class ids, or t2i caption features).

    Returns (codes, stats): codes (B, N) int64 (scale-wise models: all scales, flat, in scale order;
    continuous-token models: tokens (B, N, C) float).
    ``generator`` overrides ``seed``: one ``torch.Generator`` for the batch, or a
    :class:`~argen.samplers.rng.RowStreams` (one per image) where the sampler takes them
    (:func:`takes_row_streams`). ``cfg_schedule`` / ``top_p_rule`` default to the model's own
    conventions (``model.sampling_conventions``; LlamaGen: constant / hf, VAR: var / var), and the
    ramps' progress is the model's (ELM: the official r = (step + 1) / steps).
    """
    sampler = sampler or default_sampler(model)
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; available: {', '.join(SAMPLERS)}")
    spec = SAMPLERS[sampler]
    kind = generator_kind(model)
    if kind not in spec.kinds:
        raise ConfigError(
            f"sampler {sampler!r} cannot drive a {kind!r} model; "
            f"samplers for it: {', '.join(samplers_for(model)) or 'none'}"
        )
    why = spec.refuses(model) if spec.refuses else None
    if why:
        raise ConfigError(f"sampler {sampler!r} cannot drive {type(model).__name__}: {why}; samplers for it: "
                          f"{', '.join(samplers_for(model))}")
    fn = spec.fns[kind]
    valid = (set(inspect.signature(fn).parameters) - {"model", "cond", "opts", "rng"}) | _COMMON
    unknown = sorted(set(sampler_options) - valid)
    if unknown:
        raise ConfigError(f"unknown option(s) for sampler {sampler!r}: {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(valid))}")
    # the options drive the teacher where a sampler takes one (dd's teacher-involved sampling)
    teacher = sampler_options.get("teacher")
    if teacher is not None:
        generator_kind(teacher)
    conventions = (model if teacher is None else teacher).sampling_conventions
    opts = SamplingOptions(
        cfg_scale, cfg_interval, cfg_schedule or conventions.get("cfg_schedule", "constant"), temperature, top_k,
        top_p, greedy, top_p_rule or conventions.get("top_p_rule", "hf"), conventions.get("cfg_progress", "span"),
    )
    cond = model.check_condition(classes)
    if cond.shape[0] == 0:
        raise ConfigError("no classes given: nothing to generate")
    if isinstance(generator, RowStreams):
        if kind not in spec.row_streams:
            raise ConfigError(f"sampler {sampler!r} draws a {kind!r} model's batch from one random stream: "
                              "pass one torch.Generator, not per-image streams")
        generator.check_rows(cond.shape[0])
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
    "RowStreams",
    "SamplerSpec",
    "SamplerStats",
    "SamplingOptions",
    "draw",
    "guide",
    "check_seed",
    "default_sampler",
    "derive_seed",
    "make_rng",
    "model_options",
    "process_logits",
    "register_sampler",
    "sample",
    "samplers_for",
    "takes_row_streams",
    "token_probs",
]
