"""A static, preallocated key/value cache shared by every token-wise generator and sampler.

The buffers are allocated once per generation (no concatenation, no re-allocation), hold one length
per batch element, accept a *window* of several new positions per forward pass (speculative samplers
verify many tokens at once) and can be truncated back per element (rejected drafts are discarded by
moving the length back; stale entries are masked out and later overwritten).

While every element has the same length the cache takes a fast path: the window is written with a
slice and attention needs no explicit mask (a single query needs none, a window a lower-right causal
one). Ragged lengths use index writes and an explicit (B, 1, W, L) mask.

A compiled decode step needs the same shapes at every step, so it uses a third kind of window
(:meth:`KVCache.window_at`): given positions (B, W), written by index, attending over the *whole*
buffer through a position mask (key j is visible to a query at position p when j <= p; stale or
unwritten entries beyond are masked out). The caller computes the positions before the step
(:meth:`KVCache.next_positions`) and moves the lengths after it (:meth:`KVCache.advance`), outside the
compiled region.
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

    def table_rows(self, table: torch.Tensor) -> torch.Tensor:
        """The rows of a per-position table (RoPE angles, learned position embeddings) for this window's
        positions: (1, W, ...) on the uniform path, else (B, W, ...). A speculative window may overhang
        the sequence's end: those slots reuse the last row; their outputs are never used and, being later
        in the window, affect no other slot."""
        last = table.shape[0] - 1
        if self.start is not None and self.start + self.width <= last + 1:
            return table[self.start : self.start + self.width].unsqueeze(0)
        return table[self.positions.clamp(max=last)]


def position_mask(positions: torch.Tensor, key_len: int) -> torch.Tensor:
    """(B, 1, W, key_len) bool: a query at position p sees keys 0..p (True = attend)."""
    keys = torch.arange(key_len, device=positions.device)
    return (keys[None, None, :] <= positions[:, :, None]).unsqueeze(1)


class KVCache:
    """Per-layer key/value buffers of shape (B, H, max_len, D) plus a length per element."""

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
        shape = (batch_size, n_head, max_len, head_dim)
        # one tensor per layer (not one (n_layer, ...) tensor): a compiled step then writes each in
        # place; writing through a per-layer view of one buffer makes inductor copy the whole buffer
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._uniform: int | None = 0  # the common length while all elements agree

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def prepare(self, width: int) -> CacheWindow:
        """Describe the write of ``width`` new positions after each element's current length."""
        positions, key_len = self._positions(width)
        if self._uniform is not None:
            return CacheWindow(positions, self._uniform, key_len, None, width > 1)
        return CacheWindow(positions, None, key_len, position_mask(positions, key_len), False)

    def next_positions(self, width: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Positions (B, W) of ``width`` new entries after each element's length (only ``rows``,
        when given); raises a ConfigError when they do not fit."""
        return self._positions(width, rows)[0]

    def _positions(self, width: int, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """(positions, the end of the furthest one), room checked."""
        offs = torch.arange(width, device=self.lengths.device)
        if self._uniform is not None:
            n = self.batch_size if rows is None else rows.shape[0]
            positions, end = (offs + self._uniform).unsqueeze(0).expand(n, width), self._uniform + width
        else:
            lengths = self.lengths if rows is None else self.lengths[rows]
            positions, end = lengths[:, None] + offs, (int(lengths.max()) if lengths.numel() else 0) + width
        self._check_room(end)
        return positions, end

    def window_at(self, positions: torch.Tensor) -> CacheWindow:
        """A window at explicit positions (B, W) that attends over the whole buffer through a position
        mask: the same shapes at every step, which a compiled decode step needs (no Python ints)."""
        return CacheWindow(positions, None, self.max_len, position_mask(positions, self.max_len), False)

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
            b = torch.arange(k.shape[0], device=k.device)[:, None].expand_as(window.positions)
            kc[b, :, window.positions] = k.transpose(1, 2)
            vc[b, :, window.positions] = v.transpose(1, 2)
        return kc[:, :, : window.key_len], vc[:, :, : window.key_len]

    def advance(self, window: CacheWindow | int, rows: torch.Tensor | None = None) -> None:
        """Commit a window (or a width): every element's length grows by its width (only ``rows``'
        lengths, when given)."""
        width = window if isinstance(window, int) else window.width
        if rows is None:
            self.lengths += width
            if self._uniform is not None:
                self._uniform += width
        else:
            self.lengths[rows] += width
            self._uniform = None

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
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.lengths = self.lengths[rows].clone()

    def reset(self) -> None:
        self.truncate(0)
