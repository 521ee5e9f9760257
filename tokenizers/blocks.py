"""Conv building blocks of the taming-style encoders/decoders used by the VQ tokenizers (LlamaGen's
VQ and VAR's multi-scale VQ-VAE share them; only their attention blocks' parameter layouts differ)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from argen.errors import ConfigError
from argen.nn import attention


def latent_grid(image_size: int | tuple[int, int], downsample: int) -> tuple[int, int]:
    """(h, w) of the latents of ``image_size`` images at ``downsample``; a size it does not divide is an error."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if h % downsample or w % downsample or h < downsample or w < downsample:
        raise ConfigError(f"image size {h}x{w} must be a positive multiple of this VAE's downsample factor "
                          f"{downsample}")
    return h // downsample, w // downsample


def group_norm(c: int, groups: int = 32) -> nn.GroupNorm:
    """The official 32 groups; small models need fewer (32 groups of 1 channel = instance norm,
    which erases each channel's mean and with it flat colours)."""
    return nn.GroupNorm(groups, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float = 0.0, groups: int = 32) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin, groups), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = group_norm(cout, groups), nn.Conv2d(cout, cout, 3, 1, 1)
        self.dropout = nn.Dropout(dropout)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


def _spatial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single-head attention over the pixels of (B, C, H, W) maps, scale C^-0.5."""
    b, c, h, w = q.shape
    q, k, v = (t.reshape(b, 1, c, h * w).transpose(-1, -2) for t in (q, k, v))
    return attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)


class AttnBlock(nn.Module):
    """Spatial self-attention with separate 1x1 q/k/v convs (LlamaGen's layout)."""

    def __init__(self, c: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = group_norm(c, groups)
        self.q, self.k, self.v = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return x + self.proj_out(_spatial_attention(self.q(y), self.k(y), self.v(y)))


class FusedAttnBlock(nn.Module):
    """Spatial self-attention with one fused 1x1 ``qkv`` conv (VAR's layout)."""

    def __init__(self, c: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = group_norm(c, groups)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        return x + self.proj_out(_spatial_attention(q, k, v))


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a stride-2 3x3 conv without padding."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


# Nearest x2 then a 3x3 conv equals, per output phase (a, b), a 2x2 conv of the original map whose
# taps are sums of the 3x3 taps: rows (i-1, i) take (w0, w1 + w2) for a = 0, rows (i, i+1) take
# (w0 + w1, w2) for a = 1, and the same for columns. 16 taps instead of 36 per input pixel.
_PHASE_ROWS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(interpolate(x, 2, "nearest"), weight, bias, padding=1)`` at 4/9 of its FLOPs
    (equal up to float round-off)."""
    b, _, h, w = x.shape
    cout = weight.shape[0]
    rows = _PHASE_ROWS.to(weight)
    # (a, b', o, i, 2, 2): the 2x2 kernel of output phase (a, b')
    phase = torch.einsum("apk,oikl,bql->aboipq", rows, weight, rows).reshape(4 * cout, -1, 2, 2)
    out = F.conv2d(F.pad(x, (1, 1, 1, 1)), phase, None if bias is None else bias.repeat(4))
    out = out.view(b, 2, 2, cout, h + 1, w + 1)
    phases = [[out[:, a, c, :, a:a + h, c:c + w] for c in range(2)] for a in range(2)]
    return torch.stack([torch.stack(p, dim=-1) for p in phases], dim=3).reshape(b, cout, 2 * h, 2 * w)


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv (at inference through ``upsample_conv`` unless ``subpixel`` is
    set to False, which runs the official op order)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)
        self.subpixel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or not self.subpixel:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return upsample_conv(x, self.conv.weight, self.conv.bias)


ENCODER_TYPES = ("conv", "patch")


def check_encoder_type(encoder_type: str, width: int, depth: int) -> None:
    """The VQ tokenizers' ``encoder_type``: "conv" (the official encoder) or "patch" (:class:`PatchEncoder`)."""
    if encoder_type not in ENCODER_TYPES:
        raise ConfigError(f"unknown encoder_type {encoder_type!r}; known: {', '.join(ENCODER_TYPES)}")
    if width < 1 or depth < 0:
        raise ConfigError("patch_encoder_width must be >= 1 and patch_encoder_depth >= 0")


class PatchEncoder(nn.Module):
    """Each latent is a function of its own ``ds x ds`` pixels only (a patch embedding, then per-position
    residual MLPs with a per-position LayerNorm). The conv encoder's GroupNorm statistics and attention
    make a token depend on the whole image, so one flat colour gets many codes that the generator must
    then model as noise; here a flat patch of one colour always gets the same code."""

    def __init__(self, ds: int, width: int, depth: int, z_channels: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, ds, ds)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.SiLU(), nn.Conv2d(2 * width, width, 1))
            for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(width)
        self.conv_out = nn.Conv2d(width, z_channels, 1)

    @staticmethod
    def _channel_norm(norm: nn.LayerNorm, h: torch.Tensor) -> torch.Tensor:
        return norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for norm, mlp in zip(self.norms, self.mlps):
            h = h + mlp(self._channel_norm(norm, h))
        return self.conv_out(F.silu(self._channel_norm(self.norm_out, h)))
