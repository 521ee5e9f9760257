"""The pre-norm ViT block in timm's ``Block`` layout (``norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``), on argen's attention entry point. MAR's encoder and decoder
are stacks of these; timm itself is not needed at inference."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from argen.nn.attention import attention
from argen.nn.linear import Linear
from argen.nn.rope import apply_rope


class ViTAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.attn_drop, self.proj_drop = attn_drop, nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                rope: torch.Tensor | None = None) -> torch.Tensor:
        """``bias``: an additive attention bias broadcastable to (B, heads, N, N), or None; ``rope``: a
        rotary table (B or 1, N, head_dim/2, 2) applied to q and k, or None."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).unbind(2)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = attention(q, k, v, mask=None if bias is None else bias.to(q.dtype),
                        dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1, self.fc2 = Linear(dim, hidden), Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class ViTBlock(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x)); LayerNorm eps 1e-6, exact GELU."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = ViTAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = ViTMlp(dim, int(dim * mlp_ratio), proj_drop)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                rope: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias, rope)
        return x + self.mlp(self.norm2(x))
