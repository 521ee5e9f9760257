"""The taming / latent-diffusion conv encoder and decoder, shared by VAR's multi-scale VQ-VAE and MAR's
KL VAE. Both keep the official key layout (``down.i.block.j``, ``down.i.attn.j``, ``down.i.downsample``,
``mid.block_1/attn_1/block_2``, ``up.i`` with up.0 = full resolution), so official checkpoints load as
they are; the families differ only in the attention block and where attention sits (``TamingArch``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from argen.tokenizers.blocks import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm


@dataclass(frozen=True)
class TamingArch:
    """Widths, depth and attention placement of an encoder/decoder pair.

    ``attn_block`` is AttnBlock (separate q/k/v, LDM / MAR) or FusedAttnBlock (one qkv conv, VAR).
    Level attention, when on, follows every ResBlock of the lowest-resolution level only."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    dropout: float = 0.0
    norm_groups: int = 32
    attn_block: type[nn.Module] = AttnBlock
    encoder_attn: bool = True
    decoder_attn: bool = True
    mid_attn: bool = True

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class _Level(nn.Module):
    """One resolution level: ``block.i`` (each followed by ``attn.i`` if any), then resampling."""

    def __init__(self, cin: int, cout: int, n: int, attn: bool, resample: type | None, arch: TamingArch) -> None:
        super().__init__()
        g = arch.norm_groups
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, arch.dropout, g) for i in range(n))
        self.attn = nn.ModuleList(arch.attn_block(cout, g) for _ in range(n if attn else 0))
        if resample is Downsample:
            self.downsample = Downsample(cout)
        elif resample is Upsample:
            self.upsample = Upsample(cout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if hasattr(self, "downsample"):
            h = self.downsample(h)
        if hasattr(self, "upsample"):
            h = self.upsample(h)
        return h


class _Mid(nn.Module):
    def __init__(self, c: int, arch: TamingArch) -> None:
        super().__init__()
        g = arch.norm_groups
        self.block_1 = ResnetBlock(c, c, arch.dropout, g)
        self.attn_1 = arch.attn_block(c, g) if arch.mid_attn else nn.Identity()
        self.block_2 = ResnetBlock(c, c, arch.dropout, g)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, out_channels, H / downsample, W / downsample)."""

    def __init__(self, arch: TamingArch, out_channels: int) -> None:
        super().__init__()
        ch, mult, n = arch.ch, arch.ch_mult, len(arch.ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        ins = [ch] + [ch * m for m in mult[:-1]]
        self.down = nn.ModuleList(
            _Level(ins[i], ch * mult[i], arch.num_res_blocks, arch.encoder_attn and i == n - 1,
                   Downsample if i < n - 1 else None, arch)
            for i in range(n)
        )
        c = ch * mult[-1]
        self.mid = _Mid(c, arch)
        self.norm_out = group_norm(c, arch.norm_groups)
        self.conv_out = nn.Conv2d(c, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """(B, in_channels, h, w) -> (B, 3, h * downsample, w * downsample). ``up.i`` is resolution level i
    (up.0 = full resolution); the levels run from the lowest up, each with one more ResBlock than the
    encoder's."""

    def __init__(self, arch: TamingArch, in_channels: int) -> None:
        super().__init__()
        ch, mult, n = arch.ch, arch.ch_mult, len(arch.ch_mult)
        c = ch * mult[-1]
        self.conv_in = nn.Conv2d(in_channels, c, 3, 1, 1)
        self.mid = _Mid(c, arch)
        ins = [ch * m for m in mult[1:]] + [c]
        self.up = nn.ModuleList(
            _Level(ins[i], ch * mult[i], arch.num_res_blocks + 1, arch.decoder_attn and i == n - 1,
                   Upsample if i > 0 else None, arch)
            for i in range(n)
        )
        self.norm_out = group_norm(ch * mult[0], arch.norm_groups)
        self.conv_out = nn.Conv2d(ch * mult[0], 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
