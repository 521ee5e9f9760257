"""LlamaGen's VQ tokenizer (VQ-16 / VQ-8): a taming-style conv encoder/decoder around a vector
quantiser whose latents and codebook are both L2-normalised.

Key names and numerics follow the official ``tokenizer/tokenizer_image/vq_model.py`` so official
checkpoints load strictly and give identical codes and images.

    vq = VQTokenizer(VQConfig.preset("VQ-16"))
    codes = vq.encode(images)        # images (B, 3, H, W) in [-1, 1] -> codes (B, H/16, W/16) int64
    images = vq.decode(codes)        # -> (B, 3, H, W), roughly [-1, 1] (not clamped)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from argen.errors import ConfigError
from argen.modeling import Pretrained, build_config, register
from argen.tokenizers.blocks import (
    AttnBlock,
    Downsample,
    PatchEncoder,
    ResnetBlock,
    Upsample,
    check_encoder_type,
    group_norm,
)
from argen.tokenizers.codebook import CodeRestarts

PRESETS: dict[str, dict[str, Any]] = {
    "VQ-16": dict(encoder_ch_mult=[1, 1, 2, 2, 4], decoder_ch_mult=[1, 1, 2, 2, 4]),
    "VQ-8": dict(encoder_ch_mult=[1, 2, 2, 4], decoder_ch_mult=[1, 2, 2, 4]),
}


@dataclass
class VQConfig:
    """The official VQ ``ModelArgs`` names, plus the Encoder/Decoder widths ``ch`` and ``num_res_blocks``
    (hard-coded to 128 / 2 in the official VQModel) and the GroupNorm ``norm_groups`` (official: 32).

    ``encoder_type="patch"`` (argen's, not in any released tokenizer) swaps the conv encoder for
    :class:`PatchEncoder` (``patch_encoder_width`` x ``patch_encoder_depth``); the decoder stays the same."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    z_channels: int = 256
    dropout_p: float = 0.0
    ch: int = 128
    num_res_blocks: int = 2
    norm_groups: int = 32
    encoder_type: str = "conv"
    patch_encoder_width: int = 256
    patch_encoder_depth: int = 3

    def __post_init__(self) -> None:
        check_encoder_type(self.encoder_type, self.patch_encoder_width, self.patch_encoder_depth)
        self.encoder_ch_mult = list(self.encoder_ch_mult)
        self.decoder_ch_mult = list(self.decoder_ch_mult)
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ConfigError("encoder_ch_mult and decoder_ch_mult must have the same number of levels")
        widths = [self.ch * m for m in self.encoder_ch_mult + self.decoder_ch_mult] + [self.ch]
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(
                f"all channel widths must be multiples of norm_groups={self.norm_groups}; got {sorted(set(widths))}"
            )
        if self.entropy_loss_ratio != 0.0:
            raise ConfigError("entropy_loss_ratio != 0 is not supported (every released tokenizer uses 0)")

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "VQConfig":
        return build_config(cls, PRESETS, name, overrides, "LlamaGen VQ")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)


class _Level(nn.Module):
    """One resolution level: ResBlocks, attention after each (lowest resolution only), resampling."""

    def __init__(
        self, cin: int, cout: int, n_res: int, attn: bool, dropout: float, resample: type | None, groups: int
    ) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, dropout, groups) for i in range(n_res))
        self.attn = nn.ModuleList(AttnBlock(cout, groups) for _ in range(n_res if attn else 0))
        if resample is Downsample:
            self.downsample = Downsample(cout)
        elif resample is Upsample:
            self.upsample = Upsample(cout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, res in enumerate(self.res):
            h = res(h)
            if len(self.attn):
                h = self.attn[i](h)
        if hasattr(self, "downsample"):
            h = self.downsample(h)
        if hasattr(self, "upsample"):
            h = self.upsample(h)
        return h


def _mid(c: int, dropout: float, groups: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(c, c, dropout, groups), AttnBlock(c, groups), ResnetBlock(c, c, dropout, groups)])


class Encoder(nn.Module):
    def __init__(
        self, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int, dropout: float, groups: int = 32
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        n = len(ch_mult)
        ins = [ch] + [ch * m for m in ch_mult[:-1]]
        self.conv_blocks = nn.ModuleList(
            _Level(ins[i], ch * ch_mult[i], num_res_blocks, i == n - 1, dropout, Downsample if i < n - 1 else None,
                   groups)
            for i in range(n)
        )
        c = ch * ch_mult[-1]
        self.mid = _mid(c, dropout, groups)
        self.norm_out = group_norm(c, groups)
        self.conv_out = nn.Conv2d(c, z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(
        self, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int, dropout: float, groups: int = 32
    ) -> None:
        super().__init__()
        n = len(ch_mult)
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, 1, 1)
        self.mid = _mid(c, dropout, groups)
        levels = []
        for i in range(n):
            cout = ch * ch_mult[n - 1 - i]
            levels.append(_Level(c, cout, num_res_blocks + 1, i == 0, dropout, Upsample if i < n - 1 else None, groups))
            c = cout
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = group_norm(c, groups)
        self.conv_out = nn.Conv2d(c, 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(CodeRestarts):
    """Nearest-code lookup; with ``l2_norm`` both latents and codes are unit vectors."""

    def __init__(self, n_e: int, e_dim: int, beta: float, l2_norm: bool, show_usage: bool) -> None:
        super().__init__()
        self.n_e, self.e_dim, self.beta, self.l2_norm = n_e, e_dim, beta, l2_norm
        self.embedding = nn.Embedding(n_e, e_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)
        if l2_norm:
            with torch.no_grad():
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, p=2, dim=-1))
        if show_usage:
            self.register_buffer("codebook_used", torch.zeros(65536))
        self._init_restarts(n_e)

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, h, w) -> nearest code ids (B, h, w), squared-Euclidean as the official code."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        emb = self.codebook()
        if self.l2_norm:
            flat = F.normalize(flat, p=2, dim=-1)
        d = flat.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1) - 2 * flat @ emb.t()
        return d.argmin(dim=1).view(b, h, w)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> code vectors (B, C, h, w)."""
        return self.codebook()[ids].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Quantise with the straight-through estimator; returns (z_q, ids, losses)."""
        ids = self.indices(z)
        zn = F.normalize(z, p=2, dim=1) if self.l2_norm else z
        zq = self.lookup(ids)
        losses = {
            "codebook": F.mse_loss(zq, zn.detach()),
            "commit": self.beta * F.mse_loss(zq.detach(), zn),
        }
        self.remember(zn.permute(0, 2, 3, 1).reshape(-1, self.e_dim), ids)
        if self.training and hasattr(self, "codebook_used"):
            flat = ids.flatten()
            n = min(flat.numel(), self.codebook_used.numel())
            self.codebook_used.copy_(torch.cat([self.codebook_used[n:], flat[-n:].float()]))
        return zn + (zq - zn).detach(), ids, losses


@register("llamagen-vq")
class VQTokenizer(Pretrained):
    """Discrete tokenizer: images (B, 3, H, W) in [-1, 1] <-> codes (B, H/ds, W/ds)."""

    config_class = VQConfig
    kind = "discrete"

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.encoder_type == "patch":
            self.encoder = PatchEncoder(c.downsample, c.patch_encoder_width, c.patch_encoder_depth, c.z_channels)
        else:
            self.encoder = Encoder(c.ch, c.encoder_ch_mult, c.num_res_blocks, c.z_channels, c.dropout_p, c.norm_groups)
        self.decoder = Decoder(c.ch, c.decoder_ch_mult, c.num_res_blocks, c.z_channels, c.dropout_p, c.norm_groups)
        self.quantize = VectorQuantizer(
            c.codebook_size, c.codebook_embed_dim, c.commit_loss_beta, c.codebook_l2_norm, c.codebook_show_usage
        )
        self.quant_conv = nn.Conv2d(c.z_channels, c.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.codebook_embed_dim, c.z_channels, 1)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def code_vectors(self) -> torch.Tensor:
        """(V, C): the vector each code decodes from (l2-normalised where the quantiser normalises)."""
        return self.quantize.codebook()

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def latent_grid(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        ds = self.downsample
        if h % ds or w % ds:
            raise ConfigError(f"image size {h}x{w} is not divisible by the tokenizer's downsampling {ds}")
        return h // ds, w // ds

    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        self.latent_grid(tuple(images.shape[-2:]))

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents (B, codebook_embed_dim, h, w)."""
        self._check_images(images)
        return self.quant_conv(self.encoder(images))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantize.indices(self.encode_latents(images))

    def decode_latents(self, zq: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(zq))

    def decode(self, codes: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """codes (B, h, w), or (B, h*w) with ``grid`` (square assumed when omitted) -> images."""
        codes = torch.as_tensor(codes, device=self.quantize.embedding.weight.device).long()
        if codes.dim() == 2:
            n = codes.shape[1]
            if grid is None:
                g = int(round(n**0.5))
                if g * g != n:
                    raise ConfigError(f"{n} codes per image is not a square grid; pass grid=(h, w)")
                grid = (g, g)
            codes = codes.view(codes.shape[0], *grid)
        if codes.dim() != 3:
            raise ConfigError(f"codes must be (B, h, w) or (B, h*w), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ConfigError(f"code ids must lie in [0, {self.codebook_size - 1}]")
        return self.decode_latents(self.quantize.lookup(codes))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training forward: (reconstruction, {'codebook', 'commit'} losses)."""
        zq, _, losses = self.quantize(self.encode_latents(images))
        return self.decode_latents(zq), losses
