"""A static, preallocated key/value cache shared by every token-wise generator and sampler.

The buffers are allocated once per generation (no concatenation, no re-allocation), hold one length
per batch element, accept a *window* of several new positions per forward pass (speculative samplers
verify many tokens at once) and can be truncated back per element (rejected drafts are discarded by
moving the length back; stale entries are masked out and later overwritten).

While every element has the same length the cache takes a fast path: the window is written with a
slice and attention needs no explicit mask (a single query needs none, a window a lower-right causal
one). Ragged lengths use index writes and an explicit (B, 1, W, L) mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from argen.errors import ConfigError


@dataclass
class CacheWindow:
    """Where one forward pass writes: positions (B, W) and what attention must see."""

    positions: torch.Tensor  # (B, W) int64 sequence positions of the new entries
    start: int | None  # common start position when the batch is uniform, else None
    key_len: int  # attention reads keys [0, key_len)
    mask: torch.Tensor | None  # (B, 1, W, key_len) bool, True = attend; None on the uniform path
    causal: bool  # uniform path with W > 1: lower-right causal masking

    @property
    def width(self) -> int:
        return self.positions.shape[1]


class KVCache:
    """Per-layer key/value buffers of shape (n_layer, B, H, max_len, D) plus a length per element."""

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._uniform: int | None = 0  # the common length while all elements agree

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def prepare(self, width: int) -> CacheWindow:
        """Describe the write of ``width`` new positions after each element's current length."""
        dev = self.lengths.device
        offs = torch.arange(width, device=dev)
        if self._uniform is not None:
            start = self._uniform
            key_len = start + width
            self._check_room(key_len)
            positions = (offs + start).unsqueeze(0).expand(self.batch_size, width)
            return CacheWindow(positions, start, key_len, None, width > 1)
        positions = self.lengths[:, None] + offs
        key_len = int(self.lengths.max()) + width
        self._check_room(key_len)
        keys = torch.arange(key_len, device=dev)
        mask = keys[None, None, :] <= positions[:, :, None]  # (B, W, L)
        return CacheWindow(positions, None, key_len, mask.unsqueeze(1), False)

    def _check_room(self, key_len: int) -> None:
        if key_len > self.max_len:
            raise ConfigError(f"KV cache overflow: need {key_len} positions, cache holds {self.max_len}")

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, window: CacheWindow
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, W, D) for ``layer`` at the window; return the keys/values to attend to."""
        kc, vc = self.k[layer], self.v[layer]
        if window.start is not None:
            s, e = window.start, window.start + window.width
            kc[:, :, s:e] = k
            vc[:, :, s:e] = v
        else:
            b = torch.arange(self.batch_size, device=k.device)[:, None].expand_as(window.positions)
            kc[b, :, window.positions] = k.transpose(1, 2)
            vc[b, :, window.positions] = v.transpose(1, 2)
        return kc[:, :, : window.key_len], vc[:, :, : window.key_len]

    def advance(self, window: CacheWindow) -> None:
        """Commit a window: every element's length grows by its width."""
        self.lengths += window.width
        if self._uniform is not None:
            self._uniform += window.width

    def truncate(self, lengths: torch.Tensor | int) -> None:
        """Move lengths back (per element, or one int for all); later entries become invisible."""
        new = torch.as_tensor(lengths, dtype=torch.long, device=self.lengths.device).expand_as(self.lengths)
        if bool((new < 0).any()) or bool((new > self.lengths).any()):
            raise ConfigError("KV cache truncate: lengths must lie between 0 and the current lengths")
        self.lengths = new.clone()
        lo, hi = int(new.min()), int(new.max())
        self._uniform = lo if lo == hi else None

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (e.g. drop the unconditional CFG half once guidance ends)."""
        self.k = self.k[:, rows].contiguous()
        self.v = self.v[:, rows].contiguous()
        self.lengths = self.lengths[rows].clone()

    def reset(self) -> None:
        self.truncate(0)
