"""Rotary position embeddings (RoPE) as LlamaGen uses them.

Tables are float32 of shape (T, D/2, 2) holding [cos, sin] per rotation pair; rotation acts on
*interleaved adjacent* channel pairs (2i, 2i+1), complex-multiplication style (not rotate-half).
"""
from __future__ import annotations

import torch


def rope_frequencies(n_freq: int, rot_dim: int, base: float = 10000.0) -> torch.Tensor:
    """f_j = base^(-2j / rot_dim) for j < n_freq (float32)."""
    return 1.0 / (base ** (torch.arange(0, rot_dim, 2)[:n_freq].float() / rot_dim))


def rope_1d_table(length: int, head_dim: int, base: float = 10000.0, n_prefix: int = 0) -> torch.Tensor:
    """Table for positions 0..length-1 after ``n_prefix`` all-zero rows."""
    freqs = torch.outer(torch.arange(length).float(), rope_frequencies(head_dim // 2, head_dim, base))
    table = torch.stack([freqs.cos(), freqs.sin()], dim=-1)
    return torch.cat([torch.zeros(n_prefix, head_dim // 2, 2), table])


def rope_2d_table(
    grid: int | tuple[int, int], head_dim: int, base: float = 10000.0, n_prefix: int = 1
) -> torch.Tensor:
    """LlamaGen's 2D table for a raster-ordered grid, after ``n_prefix`` condition rows.

    Half of the head_dim/2 rotation pairs rotate with the row index, the other half with the column
    index (row angles first). The condition (class / caption) rows are all ZEROS for cos and sin, so
    their q and k become zero vectors -- exactly what the official code does; an identity rotation
    there would change every logit.
    """
    h, w = (grid, grid) if isinstance(grid, int) else grid
    half = head_dim // 2
    freqs = rope_frequencies(half // 2, half, base)  # (D/4,)
    rows = torch.outer(torch.arange(h).float(), freqs)  # (h, D/4)
    cols = torch.outer(torch.arange(w).float(), freqs)  # (w, D/4)
    angles = torch.cat(
        [rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1
    ).reshape(h * w, half)
    table = torch.stack([angles.cos(), angles.sin()], dim=-1)
    return torch.cat([torch.zeros(n_prefix, half, 2), table])


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, H, D) by table rows (B or 1, T, D/2, 2); computed in float32, cast back."""
    xs = x.float().unflatten(-1, (-1, 2))
    f = table.unsqueeze(2)
    x0, x1 = xs[..., 0], xs[..., 1]
    c, s = f[..., 0], f[..., 1]
    out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(-2)
    return out.type_as(x)
