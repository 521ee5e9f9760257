"""Random streams for samplers: one ``torch.Generator`` for a batch, or one per image.

A sampler that draws a batch from one generator (the official code's way, which is what lets seeded
runs match it) makes an image depend on the other images of its batch. :class:`RowStreams` gives every
row its own generator, seeded from (seed, the image's global index), so an image is the same whatever
the batch size or its place in a request. Samplers that draw only through the functions here
(:func:`multinomial`, :func:`exponential_like`) support it; they declare so when they register.
"""
from __future__ import annotations

import hashlib
import secrets
from typing import Sequence, Union

import torch

from argen.errors import ConfigError


class RowStreams:
    """One generator per batch row: row i's draws come from ``generators[i]`` alone."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        if not generators:
            raise ConfigError("RowStreams needs one generator per row, got none")
        self.generators = list(generators)

    def __len__(self) -> int:
        return len(self.generators)

    @classmethod
    def from_seed(cls, seed: int, first_index: int, rows: int, device: torch.device | str) -> "RowStreams":
        """Rows ``first_index .. first_index + rows - 1`` of the request seeded with ``seed``."""
        return cls([torch.Generator(device=device).manual_seed(derive_seed(seed, first_index + i))
                    for i in range(rows)])

    def check_rows(self, rows: int) -> None:
        if rows != len(self):
            raise ConfigError(f"{len(self)} random streams for a batch of {rows} rows: pass one generator per row")


Rng = Union[torch.Generator, RowStreams, None]


def derive_seed(seed: int, *where: int | str) -> int:
    """A 63-bit seed (what ``torch.manual_seed`` takes) from a seed and a place: an image's or shard's
    index in a request, or a training run's ``"step", step, rank``. A hash, so nearby places neither
    collide nor correlate, and a draw depends on its place only, never on what ran before it."""
    digest = hashlib.blake2b(repr((int(seed), *where)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def make_rng(seed: int | None, device: torch.device | str) -> tuple[torch.Generator, int]:
    """A generator on ``device`` seeded with ``seed`` (a fresh random seed, recorded, when None)."""
    seed = check_seed(seed)
    return torch.Generator(device=device).manual_seed(seed), seed


def check_seed(seed: int | None) -> int:
    """``seed`` validated, or a fresh random one when None."""
    if seed is None:
        return secrets.randbits(63)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


def multinomial(probs: torch.Tensor, rng: Rng) -> torch.Tensor:
    """One draw per distribution of ``probs`` (..., V) -> ids (...) int64. With :class:`RowStreams` the
    leading dimension is the batch and row i draws all of its distributions from its own generator."""
    v = probs.shape[-1]
    if isinstance(rng, RowStreams):
        rng.check_rows(probs.shape[0])
        rows = [torch.multinomial(p.reshape(-1, v), 1, generator=g) for p, g in zip(probs, rng.generators)]
        return torch.stack(rows).view(probs.shape[:-1])
    return torch.multinomial(probs.reshape(-1, v), 1, generator=rng).view(probs.shape[:-1])


def normal(shape: Sequence[int], rng: Rng, device: torch.device | str) -> torch.Tensor:
    """Standard normal draws (float32) of ``shape``; with :class:`RowStreams` row i from its own generator."""
    if isinstance(rng, RowStreams):
        rng.check_rows(shape[0])
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=device) for g in rng.generators])
    return torch.randn(tuple(shape), generator=rng, device=device)


def given_or_normal(shape: Sequence[int], rng: Rng, noise: torch.Tensor | None,
                    device: torch.device | str) -> torch.Tensor:
    """A sampler's noise: ``noise`` as the caller passed it (checked to be a float tensor of ``shape``), or
    standard normal draws (:func:`normal`); float32 on ``device``."""
    shape = tuple(shape)
    if noise is None:
        return normal(shape, rng, device)
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape or not noise.is_floating_point():
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ConfigError(f"noise must be a float tensor {shape} (images, tokens, token dim) for this batch, got {got}")
    return noise.to(device=device, dtype=torch.float32)


def exponential_like(t: torch.Tensor, rng: Rng) -> torch.Tensor:
    """Exp(1) draws shaped like ``t`` (Gumbel noise is -log of them); per row with :class:`RowStreams`."""
    if isinstance(rng, RowStreams):
        rng.check_rows(t.shape[0])
        return torch.stack([torch.empty_like(r).exponential_(generator=g) for r, g in zip(t, rng.generators)])
    return torch.empty_like(t).exponential_(generator=rng)
