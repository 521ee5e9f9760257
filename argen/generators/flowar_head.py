"""FlowAR's building blocks and its flow-matching head.

The head (official ``SimpleTransformerAdaLN``, ``flownet.*`` keys) is a small transformer over the
s x s tokens of one scale that predicts the flow velocity v = eps - x_0 from the noisy tokens x_t, the
time t and the AR transformer's per-token condition z ("spatial AdaLN": the modulation differs per
token). ``cross=False`` (FlowAR-S, ``Block_v1``) modulates both branches with c + te; ``cross=True``
(FlowAR-L/H, ``Block_v2``) modulates attention with the time only, adds an unmodulated cross-attention
to z and modulates the MLP with c + te.

The AR transformer shares the attention (2-D RoPE stretched over every scale), the GEGLU MLP and the
weightless RMSNorm defined here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from argen.generators.mar_head import TimestepEmbedder, _modulate
from argen.nn.attention import attention
from argen.nn.diffusion import timestep_embedding
from argen.nn.kv_cache import CacheWindow, KVCache
from argen.nn.linear import Linear
from argen.nn.norms import RMSNorm
from argen.nn.rope import apply_rope, rope_frequencies

ROPE_SPAN = 16  # official ``pt_seq_len``: every scale's positions are stretched over 16 units
NORM_EPS = 1e-6


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """The blocks' weightless RMSNorm (eps 1e-6, computed in float32, cast back)."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=NORM_EPS).type_as(x)


def geglu_hidden(dim: int, mlp_ratio: float = 4.0) -> int:
    """timm ``SwiGLU`` hidden width as FlowAR builds it: int(dim * mlp_ratio * 2 / 3)."""
    return int(dim * mlp_ratio * 2 / 3)


class GEGLU(nn.Module):
    """fc2(GELU(fc1_g x) * fc1_x x): timm's ``SwiGLU`` with ``act_layer=nn.GELU`` (exact GELU)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1_g, self.fc1_x, self.fc2 = Linear(dim, hidden), Linear(dim, hidden), Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1_g(x)) * self.fc1_x(x))))


class ScaleRoPE(nn.Module):
    """2-D RoPE over an s x s scale (official ``VisionRotaryEmbeddingFast(head_dim // 2, 16)``):
    positions arange(s) * 16 / s on both axes, the first half of the rotation pairs turn with the row,
    the second with the column; pairs are interleaved channels. ``freqs`` is in the official state dict."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.register_buffer("freqs", rope_frequencies(head_dim // 4, head_dim // 2))
        self._tables: dict[tuple, torch.Tensor] = {}

    def table(self, sides: list[int]) -> torch.Tensor:
        """Rotation table (sum s^2, head_dim / 2, 2) for the given scales, concatenated in order.
        Cached: the flow head asks for the same table at every Euler step; the key follows the buffer
        (device, storage, in-place version), so loading new weights rebuilds it; tables made in
        inference mode are kept apart from those autograd may save."""
        f = self.freqs
        key = (tuple(sides), f.device, f.data_ptr(), f._version, torch.is_inference_mode_enabled())
        if key not in self._tables:
            if len(self._tables) > 16:
                self._tables.clear()
            self._tables[key] = self._build(sides)
        return self._tables[key]

    def _build(self, sides: list[int]) -> torch.Tensor:
        parts = []
        for s in sides:
            pos = torch.arange(s, dtype=torch.float32, device=self.freqs.device) / s * ROPE_SPAN
            ang = torch.outer(pos, self.freqs.float())  # (s, hd/4)
            grid = torch.cat([ang[:, None, :].expand(s, s, -1), ang[None, :, :].expand(s, s, -1)], dim=-1)
            parts.append(grid.reshape(s * s, -1))
        angles = torch.cat(parts)
        return torch.stack([angles.cos(), angles.sin()], dim=-1)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        """Rotate x (B, H, s*s, head_dim) like the official module (for tests)."""
        return apply_rope(x.transpose(1, 2), self.table([side])[None]).transpose(1, 2)


class Attention(nn.Module):
    """Self-attention with RoPE on q and k. In the AR transformer a KV cache holds the coarser scales."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.rope = ScaleRoPE(self.head_dim)
        self.attn_drop, self.proj_drop = attn_drop, nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, sides: list[int], mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0, window: CacheWindow | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).unbind(2)  # (B, N, H, hd)
        table = self.rope.table(sides)[None]
        q, k = apply_rope(q, table).transpose(1, 2), apply_rope(k, table).transpose(1, 2)
        v = v.transpose(1, 2)
        if cache is not None:  # one whole scale: it sees every cached coarser scale and itself
            k, v = cache.update(layer, k, v, window)
        out = attention(q, k, v, mask=mask, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class CrossAttention(nn.Module):
    """Queries from the head's tokens, keys/values from the AR condition z (same token grid, RoPE on
    both); official ``crossattn`` of ``Block_v2``: no q/kv biases, ``kv`` split [k | v]."""

    def __init__(self, dim: int, cond_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = Linear(dim, dim, bias=False)
        self.kv = Linear(cond_dim, 2 * dim, bias=False)
        self.proj = Linear(dim, dim)
        self.rope = ScaleRoPE(self.head_dim)

    def forward(self, x: torch.Tensor, z: torch.Tensor, side: int) -> torch.Tensor:
        b, n, c = x.shape
        table = self.rope.table([side])[None]
        q = apply_rope(self.q(x).view(b, n, self.num_heads, self.head_dim), table).transpose(1, 2)
        k, v = self.kv(z).view(b, z.shape[1], 2, self.num_heads, self.head_dim).unbind(2)
        k, v = apply_rope(k, table).transpose(1, 2), v.transpose(1, 2)
        return self.proj(attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class HeadBlock(nn.Module):
    """``Block_v1``: both branches modulated per token by (g1, g2, s1, s2, b1, b2) = ada_lin(SiLU(c + te))."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.width = width
        self.attn = Attention(width, num_heads, qkv_bias=False)
        self.mlp = GEGLU(width, geglu_hidden(width))
        self.ada_lin = Linear(width, 6 * width)

    def forward(self, h: torch.Tensor, te: torch.Tensor, c: torch.Tensor, z: torch.Tensor, side: int) -> torch.Tensor:
        mods = self.ada_lin(F.silu(te + c))
        g1, g2, s1, s2, b1, b2 = mods.view(*mods.shape[:-1], 6, self.width).unbind(-2)
        h = h + g1 * self.attn(_modulate(rms_norm(h), b1, s1), [side])
        return h + g2 * self.mlp(_modulate(rms_norm(h), b2, s2))


class CrossHeadBlock(nn.Module):
    """``Block_v2``: time-modulated self-attention, cross-attention to z, per-token-modulated MLP."""

    def __init__(self, width: int, cond_dim: int, num_heads: int) -> None:
        super().__init__()
        self.width = width
        self.attn = Attention(width, num_heads, qkv_bias=False)
        self.crossattn = CrossAttention(width, cond_dim, num_heads)
        self.norm2_1 = RMSNorm(width, eps=NORM_EPS)
        self.norm2_2 = RMSNorm(cond_dim, eps=NORM_EPS)
        self.mlp = GEGLU(width, geglu_hidden(width))
        self.ada_lin_attn = Linear(width, 3 * width)
        self.ada_lin_mlp = Linear(width, 3 * width)

    def forward(self, h: torch.Tensor, te: torch.Tensor, c: torch.Tensor, z: torch.Tensor, side: int) -> torch.Tensor:
        m = self.ada_lin_attn(F.silu(te))
        g1, s1, b1 = m.view(*m.shape[:-1], 3, self.width).unbind(-2)
        h = h + g1 * self.attn(_modulate(rms_norm(h), b1, s1), [side])
        h = h + self.crossattn(self.norm2_1(h), self.norm2_2(z), side)
        m = self.ada_lin_mlp(F.silu(c + te))
        g2, s2, b2 = m.view(*m.shape[:-1], 3, self.width).unbind(-2)
        return h + g2 * self.mlp(_modulate(rms_norm(h), b2, s2))


class HeadFinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.linear = Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(width, 2 * width))

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(rms_norm(h), shift, scale))


class FlowHead(nn.Module):
    """(x_t (B, n, C), t (B,) in [0, 1], z (B, n, D)) -> velocity (B, n, C) for one s x s scale.
    The network sees the integer timestep (t * 1000) truncated, computed in float32 as the official."""

    def __init__(self, in_channels: int, width: int, cond_dim: int, depth: int, cross: bool) -> None:
        super().__init__()
        self.in_channels = in_channels
        heads = max(width // 64, 1)
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = Linear(cond_dim, width)
        self.input_proj = Linear(in_channels, width)
        self.res_blocks = nn.ModuleList(
            (CrossHeadBlock(width, cond_dim, heads) if cross else HeadBlock(width, heads)) for _ in range(depth)
        )
        self.final_layer = HeadFinalLayer(width, in_channels)

    @staticmethod
    def timesteps(t: torch.Tensor) -> torch.Tensor:
        """The integer timesteps the network embeds: (t * 1000).long() of the float32 times."""
        return (t.float() * 1000).long()

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        side = int(round(x.shape[1] ** 0.5))
        freq = timestep_embedding(self.timesteps(t), self.time_embed.freq_dim).to(x.dtype)
        te = self.time_embed.mlp(freq).unsqueeze(1)  # (B, 1, W)
        c = self.cond_embed(z)
        h = self.input_proj(x)
        for blk in self.res_blocks:
            h = blk(h, te, c, z, side)
        return self.final_layer(h, c + te)

    def init_weights(self) -> None:
        """MAR / DiT-style initialisation: xavier linears, N(0, 0.02) time MLP, zero AdaLN and output
        (the official FlowAR init is known to zero the output Linear; the rest follows MAR's head)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for blk in self.res_blocks:
            for lin in (getattr(blk, "ada_lin", None), getattr(blk, "ada_lin_attn", None),
                        getattr(blk, "ada_lin_mlp", None)):
                if lin is not None:
                    nn.init.zeros_(lin.weight)
                    nn.init.zeros_(lin.bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
