"""Fixed 2D sine-cosine position embeddings (MAE's), used to initialise learned position embeddings
of models trained from scratch on little data: a random N(0, 0.02) start leaves a small model
blind to where tokens are for thousands of steps."""
from __future__ import annotations

import torch

from argen.errors import ConfigError


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """(height * width, dim) in row-major order: the first half of the channels encodes the row, the
    second half the column, each as [sin(p w_k), cos(p w_k)] with w_k = 10000^(-k / (dim / 4))."""
    if dim % 4:
        raise ConfigError(f"a 2D sine-cosine embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def axis(n: int) -> torch.Tensor:
        angles = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (n, dim / 2)

    rows = axis(height)[:, None].expand(height, width, dim // 2)
    cols = axis(width)[None].expand(height, width, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(height * width, dim).float()
