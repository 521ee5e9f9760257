"""ELM's binary autoencoder (BAE): K Bernoulli bits per latent cell, read as ``token_each`` sub-tokens
of ``code_dim`` bits each (most significant bit first) for the split-vocabulary language model.

Module and key names follow the official ``bae/binaryae.py`` (flat ``encoder.blocks`` /
``generator.blocks`` lists, ``quantize.proj.0`` + ``quantize.embed``, the unused
``generator.logsigma`` head), so the released ``binaryae_ema.th`` loads strictly
(:func:`argen.convert.elm.load_bae`). The official network works on images in [0, 1]; argen's
``encode`` / ``decode`` take and give [-1, 1] and convert in :func:`to_unit` / :func:`from_unit` only.
The lower-level methods (``bit_probs``, ``decode_bits``, ...) work in the official [0, 1] space.

    bae = BinaryAutoEncoder(BinaryAEConfig(codebook_size=16, token_each=2))   # 2 sub-tokens of 8 bits
    ids = bae.encode(images)                  # (B, 3, 256, 256) in [-1, 1] -> (B, 16, 16, 2) in [0, 256)
    images = bae.decode(ids)                  # -> (B, 3, 256, 256), about [-1, 1] (not clamped)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from argen.errors import ConfigError
from argen.modeling import Pretrained, build_config, register
from argen.tokenizers.blocks import AttnBlock, Downsample, Upsample, group_norm, latent_grid

PRESETS: dict[str, dict[str, Any]] = {
    "bae_16": dict(codebook_size=16),  # the released 'custom' hparams with --norm_first; 256px -> 16x16x16 bits
    "bae_20": dict(codebook_size=20),
    "bae_24": dict(codebook_size=24),
}


@dataclass
class BinaryAEConfig:
    """The official ``HparamsBinaryAE`` names (defaults: the released BAEs); ``codebook_size`` is the
    number of bits K. ``deterministic``: training thresholds the bits instead of drawing them
    (the official ``--deterministic``; encoding is deterministic unless asked to sample).
    ``token_each`` splits the K bits into sub-tokens; ``norm_groups`` (official 32) is for small models."""

    img_size: int = 256
    nf: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    emb_dim: int = 256
    codebook_size: int = 16
    token_each: int = 1
    norm_first: bool = True
    use_tanh: bool = False
    deterministic: bool = False
    gen_mul: float = 1.0
    norm_groups: int = 32

    def __post_init__(self) -> None:
        self.ch_mult = [int(m) for m in self.ch_mult]
        self.attn_resolutions = [int(r) for r in self.attn_resolutions]
        if self.use_tanh:
            raise ConfigError("use_tanh=True (bits in {-1, 1}) is not supported; the released BAEs use sigmoid "
                              "bits in {0, 1} (use_tanh=False)")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ConfigError(f"ch_mult must be a non-empty list of positive multipliers, got {self.ch_mult}")
        if min(self.nf, self.emb_dim, self.codebook_size, self.token_each, self.generator_res_blocks) < 1 \
                or self.res_blocks < 1:
            raise ConfigError("nf, emb_dim, codebook_size, token_each and res_blocks (times gen_mul) must be >= 1")
        if self.codebook_size % self.token_each:
            raise ConfigError(f"token_each={self.token_each} does not divide the {self.codebook_size} bits "
                              "(codebook_size): code_dim = codebook_size / token_each must be a whole number")
        if self.codebook_size // self.token_each > 62:
            raise ConfigError(f"code_dim {self.codebook_size // self.token_each} > 62 bits does not fit an int64 id")
        if self.img_size % self.downsample:
            raise ConfigError(f"img_size {self.img_size} must be a multiple of the downsample factor {self.downsample}")
        widths = {self.nf * m for m in self.ch_mult} | ({self.emb_dim} if self.norm_first else set())
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(f"channel widths {sorted(widths)} must be multiples of norm_groups={self.norm_groups}")

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "BinaryAEConfig":
        return build_config(cls, PRESETS, name, overrides, "ELM BAE")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def generator_res_blocks(self) -> int:
        return int(self.res_blocks * self.gen_mul)

    @property
    def code_dim(self) -> int:
        return self.codebook_size // self.token_each


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """argen's [-1, 1] images -> the official [0, 1] range (the one conversion into the network)."""
    return images * 0.5 + 0.5


def from_unit(images: torch.Tensor) -> torch.Tensor:
    """The official [0, 1] output -> argen's [-1, 1] (the one conversion out of the network)."""
    return images * 2.0 - 1.0


def bits_to_tokens(bits: torch.Tensor, token_each: int) -> torch.Tensor:
    """Bits (B, K, h, w) in {0, 1} -> ids (B, h, w, token_each) int64: channel ``g*code_dim + j`` has
    weight 2^(code_dim-1-j) in sub-token g (most significant bit first, as the official train loop)."""
    if bits.dim() != 4 or bits.shape[1] % token_each:
        raise ConfigError(f"bits must be (B, K, h, w) with K a multiple of token_each={token_each}, "
                          f"got {tuple(bits.shape)}")
    if not ((bits == 0) | (bits == 1)).all():
        raise ConfigError("bits must be 0 or 1")
    b, k, h, w = bits.shape
    code_dim = k // token_each
    weights = 2 ** torch.arange(code_dim - 1, -1, -1, device=bits.device, dtype=torch.int64)
    grouped = bits.permute(0, 2, 3, 1).reshape(b, h, w, token_each, code_dim).to(torch.int64)
    return (grouped * weights).sum(-1)


def tokens_to_bits(ids: torch.Tensor, code_dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Ids (B, h, w, token_each) in [0, 2^code_dim) -> bits (B, token_each * code_dim, h, w) of ``dtype``
    (the exact inverse of :func:`bits_to_tokens`)."""
    if ids.dim() != 4 or ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
        raise ConfigError(f"ids must be an integer tensor (B, h, w, token_each), got {ids.dtype} "
                          f"{tuple(ids.shape)}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= 2**code_dim):
        raise ConfigError(f"ids must be in [0, {2**code_dim}) (code_dim {code_dim} bits), got values in "
                          f"[{int(ids.min())}, {int(ids.max())}]")
    b, h, w, g = ids.shape
    shifts = torch.arange(code_dim - 1, -1, -1, device=ids.device, dtype=torch.int64)
    bits = (ids.to(torch.int64).unsqueeze(-1) >> shifts) & 1  # (B, h, w, g, code_dim)
    return bits.reshape(b, h, w, g * code_dim).permute(0, 3, 1, 2).to(dtype).contiguous()


def sample_bits(probs: torch.Tensor, sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bits from probabilities: ``p > 0.5`` or, with ``sample``, Bernoulli(p) (drawn on the generator's
    device, so a CPU generator gives the same bits on every device)."""
    if not sample:
        return (probs > 0.5).to(probs.dtype)
    if generator is not None and generator.device != probs.device:
        return torch.bernoulli(probs.detach().to(generator.device), generator=generator).to(probs)
    return torch.bernoulli(probs.detach(), generator=generator)


def codebook_loss(probs: torch.Tensor) -> torch.Tensor:
    """The official regulariser mean(s(p) (1 - s(p))), s = sigmoid applied to the probabilities again
    (as the official code does); weight 0 in the released training."""
    s = torch.sigmoid(probs)
    return (s * (1 - s)).mean()


class ResBlock(nn.Module):
    """GN-SiLU-conv3x3 twice plus a residual; the 1x1 ``conv_out`` exists always (the official layout)
    but is applied only when the width changes."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin, groups), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = group_norm(cout, groups), nn.Conv2d(cout, cout, 3, 1, 1)
        self.conv_out = nn.Conv2d(cin, cout, 1)
        self.resize = cin != cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return h + (self.conv_out(x) if self.resize else x)


class _Blocks(nn.Module):
    """A flat ``blocks`` list run in order (the official Encoder / Generator)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Encoder(_Blocks):
    def __init__(self, c: BinaryAEConfig) -> None:
        super().__init__()
        g, res, ch = c.norm_groups, c.img_size, c.nf
        blocks: list[nn.Module] = [nn.Conv2d(3, ch, 3, 1, 1)]
        for i, m in enumerate(c.ch_mult):
            for _ in range(c.res_blocks):
                blocks.append(ResBlock(ch, c.nf * m, g))
                ch = c.nf * m
                if res in c.attn_resolutions:
                    blocks.append(AttnBlock(ch, g))
            if i < len(c.ch_mult) - 1:
                blocks.append(Downsample(ch))
                res //= 2
        blocks += [ResBlock(ch, ch, g), AttnBlock(ch, g), ResBlock(ch, ch, g), group_norm(ch, g),
                   nn.Conv2d(ch, c.emb_dim, 3, 1, 1)]  # no activation before the last conv (official)
        self.blocks = nn.ModuleList(blocks)


class Generator(_Blocks):
    """The decoder. ``norm_first`` puts a GroupNorm(emb_dim) first, shifting every block index by one."""

    def __init__(self, c: BinaryAEConfig) -> None:
        super().__init__()
        g, res, ch = c.norm_groups, c.img_size // c.downsample, c.nf * c.ch_mult[-1]
        blocks: list[nn.Module] = [group_norm(c.emb_dim, g)] if c.norm_first else []
        blocks += [nn.Conv2d(c.emb_dim, ch, 3, 1, 1), ResBlock(ch, ch, g), AttnBlock(ch, g), ResBlock(ch, ch, g)]
        for i in reversed(range(len(c.ch_mult))):
            for _ in range(c.generator_res_blocks):
                blocks.append(ResBlock(ch, c.nf * c.ch_mult[i], g))
                ch = c.nf * c.ch_mult[i]
                if res in c.attn_resolutions:
                    blocks.append(AttnBlock(ch, g))
            if i > 0:
                blocks.append(Upsample(ch))
                res *= 2
        blocks += [group_norm(ch, g), nn.Conv2d(ch, 3, 3, 1, 1)]
        self.blocks = nn.ModuleList(blocks)
        # the official ELBO head: stored in the released files, never used for decoding
        self.logsigma = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1), nn.ReLU(), nn.Conv2d(ch, 3, 1))


class BinaryQuantizer(nn.Module):
    """``proj``: 1x1 conv emb_dim -> K then sigmoid (per-bit probabilities); ``embed``: the K x emb_dim
    table whose bit-weighted sum is the continuous latent."""

    def __init__(self, bits: int, emb_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(emb_dim, bits, 1), nn.Sigmoid())
        self.embed = nn.Embedding(bits, emb_dim)


@register("elm-bae")
class BinaryAutoEncoder(Pretrained):
    """Bit tokenizer: images (B, 3, H, W) in [-1, 1] <-> ids (B, H/ds, W/ds, token_each) in [0, 2^code_dim)."""

    config_class = BinaryAEConfig
    kind = "bits"

    def __init__(self, config: BinaryAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantize = BinaryQuantizer(config.codebook_size, config.emb_dim)
        self.generator = Generator(config)

    # -- the protocol's numbers ------------------------------------------------------------------------
    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def bits(self) -> int:
        return self.config.codebook_size

    @property
    def token_each(self) -> int:
        return self.config.token_each

    @property
    def code_dim(self) -> int:
        return self.config.code_dim

    @property
    def codebook_size(self) -> int:
        return 2**self.code_dim

    def latent_grid(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        return latent_grid(image_size, self.downsample)

    def with_token_each(self, token_each: int) -> "BinaryAutoEncoder":
        """The same BAE read with another split (e.g. bae_16 as 1 x 16 or 2 x 8 bits); shares the weights."""
        other = type(self).from_config(dataclasses.replace(self.config, token_each=token_each), device="meta")
        other.load_state_dict(self.state_dict(), assign=True)
        return other.train(self.training)

    # -- official-space steps (images in [0, 1]) -------------------------------------------------------
    def encoder_output(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) -> (B, emb_dim, h, w)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"images must be (B, 3, H, W), got {tuple(x.shape)}")
        self.latent_grid(tuple(x.shape[-2:]))
        return self.encoder(x)

    def bit_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> (B, K, h, w) logits (before the sigmoid)."""
        return self.quantize.proj[0](self.encoder_output(x))

    def bit_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> (B, K, h, w) per-bit probabilities."""
        return self.quantize.proj(self.encoder_output(x))

    def bits_to_z(self, bits: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) bits -> the generator input z[b, :, h, w] = sum_n bits[b, n, h, w] embed[n]."""
        if bits.dim() != 4 or bits.shape[1] != self.bits:
            raise ConfigError(f"bits must be (B, {self.bits}, h, w), got {tuple(bits.shape)}")
        weight = self.quantize.embed.weight
        return torch.einsum("bnhw,nd->bdhw", bits.to(weight.dtype), weight)

    def decode_z(self, z: torch.Tensor) -> torch.Tensor:
        """A continuous latent (B, emb_dim, h, w) -> the raw generator output (about [0, 1])."""
        if z.dim() != 4 or z.shape[1] != self.config.emb_dim:
            raise ConfigError(f"latents must be (B, {self.config.emb_dim}, h, w), got {tuple(z.shape)}")
        return self.generator(z)

    def decode_bits(self, bits: torch.Tensor) -> torch.Tensor:
        """{0, 1} bits (B, K, h, w) -> the raw generator output (about [0, 1], not clamped): the
        official ``decode(bits)``, through the exact bit embedding."""
        return self.generator(self.bits_to_z(bits))

    # -- argen's protocol (images in [-1, 1]) ----------------------------------------------------------
    def encode_bits(self, images: torch.Tensor, sample: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> float bits (B, K, h, w): thresholded, or Bernoulli draws with ``sample``."""
        return sample_bits(self.bit_probs(to_unit(images)), sample, generator)

    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> ids (B, h, w, token_each) int64 in [0, 2^code_dim)."""
        return bits_to_tokens(self.encode_bits(images, sample, generator), self.token_each)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (B, h, w, token_each) -> images (B, 3, H, W), about [-1, 1] (not clamped)."""
        if ids.dim() != 4 or ids.shape[-1] != self.token_each:
            raise ConfigError(f"ids must be (B, h, w, token_each={self.token_each}) for this BAE "
                              f"({self.bits} bits = {self.token_each} x {self.code_dim}), got {tuple(ids.shape)}")
        return from_unit(self.decode_bits(tokens_to_bits(ids, self.code_dim)))

    def forward(self, images: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training: images in [-1, 1] -> (reconstruction in [-1, 1], {'code': the official codebook
        loss}). Bits are Bernoulli draws in training mode (thresholded with ``deterministic`` or in eval
        mode), passed on straight-through as bits + p - stopgrad(p)."""
        probs = self.bit_probs(to_unit(images))
        bits = sample_bits(probs, self.training and not self.config.deterministic, generator)
        recon = self.generator(self.bits_to_z(bits + probs - probs.detach()))
        return from_unit(recon), {"code": codebook_loss(probs)}
