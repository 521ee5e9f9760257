"""What every sampler reports, so each speed claim can be checked."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from typing import Any

_DRAFT_FIELDS = ("draft_passes", "draft_head_evaluations", "steps_drafted", "steps_accepted", "tokens_drafted",
                 "tokens_accepted", "residual_fallbacks")


@dataclass
class SamplerStats:
    sampler: str
    batch_size: int  # samples generated (without the CFG doubling)
    tokens_per_sample: int
    forward_passes: int = 0  # model forward passes (a CFG pair counts once: it is one batched pass)
    wall_time_s: float = 0.0
    seed: int | None = None
    guided_rows: int = 0  # rows per pass including the CFG half at the start
    accepted_history: list[float] = field(default_factory=list)  # mean tokens accepted per pass
    # samples that committed k tokens in one pass, at index k (speculative samplers)
    accept_histogram: list[int] = field(default_factory=list)
    batches: int = 1  # sequential sampler calls merged into these stats
    head_evaluations: int = 0  # batched calls of a per-token head (MAR's diffusion, FlowAR's flow steps)
    # speculative decoding with a draft model (cspd): the draft's sequential passes and head chains, the
    # drafted steps (per image) and tokens verified, how many were kept, and residual draws that gave up
    draft_passes: int = 0
    draft_head_evaluations: int = 0
    steps_drafted: int = 0
    steps_accepted: int = 0
    tokens_drafted: int = 0
    tokens_accepted: int = 0
    residual_fallbacks: int = 0
    # the latents to decode when they are not a function of the codes (VAR's more_smooth), else None
    latents: Any = field(default=None, repr=False)

    @property
    def tokens_per_pass(self) -> float:
        """Mean tokens accepted per forward pass per sample (1.0 for plain AR)."""
        return self.tokens_per_sample * self.batches / max(self.forward_passes, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.batch_size * self.tokens_per_sample / max(self.wall_time_s, 1e-9)

    def merge(self, other: "SamplerStats") -> "SamplerStats":
        """Fold the stats of a following batch (same sampler, same token count) into these."""
        self.batch_size += other.batch_size
        self.forward_passes += other.forward_passes
        self.wall_time_s += other.wall_time_s
        self.accepted_history += other.accepted_history
        pairs = zip_longest(self.accept_histogram, other.accept_histogram, fillvalue=0)
        self.accept_histogram = [a + b for a, b in pairs]
        self.batches += other.batches
        self.head_evaluations += other.head_evaluations
        for name in _DRAFT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if self.latents is not None and other.latents is not None:
            import torch

            self.latents = torch.cat([self.latents, other.latents])
        return self

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("accepted_history", "latents")}
        if self.draft_passes:
            d["step_acceptance"] = self.steps_accepted / max(self.steps_drafted, 1)
            d["token_acceptance"] = self.tokens_accepted / max(self.tokens_drafted, 1)
        else:  # no draft model: nothing to report
            for name in _DRAFT_FIELDS:
                d.pop(name)
        d["tokens_per_pass"] = self.tokens_per_pass
        d["tokens_per_second"] = self.tokens_per_second
        return d
