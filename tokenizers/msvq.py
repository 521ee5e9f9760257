"""VAR's multi-scale residual VQ-VAE: one conv encoder/decoder, and a quantiser that codes the latent
map as a sum of K token maps of growing size (1x1 ... 16x16), each upsampled (bicubic, except the
last) and refined by a shared 3x3 "phi" conv before it is added.

Key names and numerics follow the official ``models/vqvae.py``, ``basic_vae.py`` and ``quant.py`` so
official checkpoints load strictly and give identical codes and images.

    vae = MultiScaleVQVAE(MultiScaleVQConfig())              # vae_ch160v4096z32, 256px
    codes = vae.encode(images)     # [(B, 1, 1), (B, 2, 2), ..., (B, 16, 16)] int64
    images = vae.decode(codes)     # -> (B, 3, H, W) in [-1, 1] (clamped, as the official code)
    flat = vae.flatten_codes(codes)                         # (B, 680), scale order
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from argen.errors import ConfigError
from argen.modeling import Pretrained, build_config, register
from argen.tokenizers.blocks import FusedAttnBlock, PatchEncoder, check_encoder_type
from argen.tokenizers.codebook import CodeRestarts
from argen.tokenizers.taming import Decoder, Encoder, TamingArch

PATCH_NUMS_256 = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
PATCH_NUMS_512 = [1, 2, 3, 4, 6, 9, 13, 18, 24, 32]
PRESETS: dict[str, dict[str, Any]] = {
    "vae_ch160v4096z32": dict(),  # the released VQ-VAE (VAR d16 .. d30 at 256px)
    "vae_ch160v4096z32-512": dict(v_patch_nums=PATCH_NUMS_512),  # the same weights for d36 at 512px
}


@dataclass
class MultiScaleVQConfig:
    """The official ``VQVAE`` arguments; ``ch_mult``/``num_res_blocks`` (hard-coded (1,1,2,2,4)/2 in the
    official VQVAE) and ``norm_groups`` (official 32) are options for small models, and so is argen's
    ``encoder_type="patch"`` (:class:`~argen.tokenizers.blocks.PatchEncoder`; the decoder stays VAR's)."""

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    dropout: float = 0.0
    beta: float = 0.25
    using_znorm: bool = False
    quant_conv_ks: int = 3
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    v_patch_nums: list[int] = field(default_factory=lambda: list(PATCH_NUMS_256))
    using_sa: bool = True
    using_mid_sa: bool = True
    norm_groups: int = 32
    encoder_type: str = "conv"
    patch_encoder_width: int = 256
    patch_encoder_depth: int = 3

    def __post_init__(self) -> None:
        check_encoder_type(self.encoder_type, self.patch_encoder_width, self.patch_encoder_depth)
        self.ch_mult, self.v_patch_nums = list(self.ch_mult), [int(p) for p in self.v_patch_nums]
        if not self.v_patch_nums or any(p < 1 for p in self.v_patch_nums):
            raise ConfigError(f"v_patch_nums must be positive sizes, got {self.v_patch_nums}")
        if any(b <= a for a, b in zip(self.v_patch_nums, self.v_patch_nums[1:])):
            raise ConfigError(f"v_patch_nums must grow strictly, got {self.v_patch_nums}")
        widths = [self.ch * m for m in self.ch_mult] + [self.ch]
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(f"channel widths {sorted(set(widths))} must be multiples of "
                              f"norm_groups={self.norm_groups}")
        if self.using_znorm:
            raise ConfigError("using_znorm=True is not supported (every released VAR VQ-VAE uses False)")
        if self.share_quant_resi < 0:
            raise ConfigError("share_quant_resi must be >= 0")

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "MultiScaleVQConfig":
        return build_config(cls, PRESETS, name, overrides, "VAR VQ-VAE")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def num_tokens(self) -> int:
        return sum(p * p for p in self.v_patch_nums)


def _taming_arch(cfg: MultiScaleVQConfig) -> TamingArch:
    """VAR's encoder/decoder: fused-qkv attention, at the lowest level on both sides when ``using_sa``."""
    return TamingArch(
        cfg.ch, tuple(cfg.ch_mult), cfg.num_res_blocks, cfg.dropout, cfg.norm_groups, FusedAttnBlock,
        encoder_attn=cfg.using_sa, decoder_attn=cfg.using_sa, mid_attn=cfg.using_mid_sa,
    )


class MSEncoder(Encoder):
    def __init__(self, cfg: MultiScaleVQConfig) -> None:
        super().__init__(_taming_arch(cfg), cfg.z_channels)


class MSDecoder(Decoder):
    def __init__(self, cfg: MultiScaleVQConfig) -> None:
        super().__init__(_taming_arch(cfg), cfg.z_channels)


class Phi(nn.Conv2d):
    """The residual refinement of one scale's upsampled codes: (1 - r) h + r conv3x3(h)."""

    def __init__(self, c: int, ratio: float) -> None:
        super().__init__(c, c, 3, 1, 1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


def _ticks(k: int) -> torch.Tensor:
    return torch.linspace(1 / 3 / k, 1 - 1 / 3 / k, k, dtype=torch.float64)


class _PhiTable(nn.Module):
    """K phis placed at ticks over [0, 1]; scale si of SN uses the one nearest to si / (SN - 1)."""

    def __init__(self, phis: list[nn.Module]) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(phis)

    def pick(self, at: float) -> nn.Module:
        return self.qresi_ls[int(torch.argmin((_ticks(len(self.qresi_ls)) - at).abs()))]


class _PhiNonShared(nn.ModuleList):
    """share_quant_resi = 0: one phi per scale (keys ``quant_resi.i``), same nearest-tick lookup."""

    def pick(self, at: float) -> nn.Module:
        return self[int(torch.argmin((_ticks(len(self)) - at).abs()))]


class _PhiShared(nn.Module):
    """share_quant_resi = 1: one phi for all scales (key ``quant_resi.qresi``)."""

    def __init__(self, phi: nn.Module) -> None:
        super().__init__()
        self.qresi = phi

    def pick(self, at: float) -> nn.Module:
        return self.qresi


class MultiScaleQuantizer(CodeRestarts):
    """Residual quantisation over scales, and the maps between codes, latents and the VAR inputs."""

    def __init__(self, cfg: MultiScaleVQConfig) -> None:
        super().__init__()
        self.vocab_size, self.C, self.beta = cfg.vocab_size, cfg.z_channels, cfg.beta
        self.patch_nums = list(cfg.v_patch_nums)
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        nn.init.uniform_(self.embedding.weight, -1 / cfg.vocab_size, 1 / cfg.vocab_size)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), cfg.vocab_size))
        self.n_e = cfg.vocab_size
        self._init_restarts(cfg.vocab_size)

        def phi() -> nn.Module:
            return Phi(cfg.z_channels, cfg.quant_resi) if abs(cfg.quant_resi) > 1e-6 else nn.Identity()

        k = cfg.share_quant_resi
        if k == 0:
            self.quant_resi = _PhiNonShared([phi() for _ in self.patch_nums])
        elif k == 1:
            self.quant_resi = _PhiShared(phi())
        else:
            self.quant_resi = _PhiTable([phi() for _ in range(k)])

    def phi(self, si: int) -> nn.Module:
        return self.quant_resi.pick(si / max(len(self.patch_nums) - 1, 1))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, C) -> ids (N,): squared-Euclidean argmin against the raw codebook, as the official code."""
        e = self.embedding.weight
        d = z.square().sum(1, keepdim=True) + e.square().sum(1)
        return torch.addmm(d, z, e.t(), beta=1, alpha=-2).argmin(dim=1)

    def lookup(self, ids: torch.Tensor, pn: int) -> torch.Tensor:
        """ids (B, pn*pn) or (B, pn, pn) -> code vectors (B, C, pn, pn)."""
        b = ids.shape[0]
        return self.embedding(ids.reshape(b, pn * pn)).transpose(1, 2).reshape(b, self.C, pn, pn)

    def upsample_scale(self, h: torch.Tensor, si: int) -> torch.Tensor:
        """One scale's codes (B, C, pn, pn) -> its phi-refined contribution at the full latent size."""
        full = self.patch_nums[-1]
        if si < len(self.patch_nums) - 1:
            h = F.interpolate(h, size=(full, full), mode="bicubic")
        return self.phi(si)(h)

    def quantize(self, f: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Latent f (B, C, H, W) -> (ids per scale (B, pn, pn), f_hat after each scale)."""
        b, c, h, w = f.shape
        self._check_latent(h, w)
        rest, f_hat = f.detach().clone(), torch.zeros_like(f)
        ids_all, fhats = [], []
        last = len(self.patch_nums) - 1
        for si, pn in enumerate(self.patch_nums):
            z = F.interpolate(rest, size=(pn, pn), mode="area") if si != last else rest
            ids = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, pn, pn)
            contrib = self.upsample_scale(self.lookup(ids, pn), si)
            f_hat = f_hat + contrib
            rest = rest - contrib
            ids_all.append(ids)
            fhats.append(f_hat)
        return ids_all, fhats

    def codes_to_fhat(self, codes: Sequence[torch.Tensor], all_scales: bool = False) -> list[torch.Tensor]:
        """Codes per scale -> the accumulated latent after each scale (or only after the last)."""
        f_hat, out = None, []
        for si, pn in enumerate(self.patch_nums):
            contrib = self.upsample_scale(self.lookup(codes[si], pn), si)
            f_hat = contrib if f_hat is None else f_hat + contrib
            if all_scales:
                out.append(f_hat)
        return out if all_scales else [f_hat]

    def next_input(self, si: int, f_hat: torch.Tensor | None, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """After sampling scale ``si``: add its contribution to f_hat and return (f_hat, the next
        scale's VAR input (B, pn_next^2, C), or f_hat itself after the last scale). ``ids`` are the
        scale's code ids, or (floats) its code vectors (B, C, pn, pn) (e.g. a soft mixture of codes)."""
        h = ids if ids.is_floating_point() else self.lookup(ids, self.patch_nums[si])
        contrib = self.upsample_scale(h, si)
        f_hat = contrib if f_hat is None else f_hat + contrib
        if si == len(self.patch_nums) - 1:
            return f_hat, f_hat
        pn = self.patch_nums[si + 1]
        nxt = F.interpolate(f_hat, size=(pn, pn), mode="area")
        return f_hat, nxt.flatten(2).transpose(1, 2)

    def teacher_forcing_input(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Codes per scale -> the VAR inputs of scales 1 .. K-1, (B, L - 1, C) (the official
        ``idxBl_to_var_input``); scale 0's input is the class token."""
        f_hat, inputs = None, []
        for si in range(len(self.patch_nums) - 1):
            f_hat, nxt = self.next_input(si, f_hat, codes[si])
            inputs.append(nxt)
        if not inputs:
            b = codes[0].shape[0]
            return self.embedding.weight.new_zeros(b, 0, self.C)
        return torch.cat(inputs, dim=1)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
        """Training: straight-through f_hat, ids, {'codebook', 'commit'} losses averaged over scales."""
        b, c, h, w = f.shape
        self._check_latent(h, w)
        f_ng = f.detach()
        rest, f_hat = f_ng.clone(), torch.zeros_like(f)
        codebook = commit = f.new_zeros(())
        ids_all, zs = [], []
        last = len(self.patch_nums) - 1
        for si, pn in enumerate(self.patch_nums):
            z = F.interpolate(rest, size=(pn, pn), mode="area") if si != last else rest
            zs.append(z.permute(0, 2, 3, 1).reshape(-1, c))
            with torch.no_grad():
                ids = self.nearest(zs[-1]).view(b, pn, pn)
            contrib = self.upsample_scale(self.lookup(ids, pn), si)
            f_hat = f_hat + contrib
            rest = rest - contrib.detach()
            codebook = codebook + F.mse_loss(f_hat, f_ng)
            commit = commit + self.beta * F.mse_loss(f_hat.detach(), f)
            ids_all.append(ids)
        n = len(self.patch_nums)
        self.remember(torch.cat(zs), torch.cat([i.flatten() for i in ids_all]))
        return f + (f_hat - f).detach(), ids_all, {"codebook": codebook / n, "commit": commit / n}

    def _check_latent(self, h: int, w: int) -> None:
        if h != w or h != self.patch_nums[-1]:
            raise ConfigError(
                f"the encoder's latent map is {h}x{w} but v_patch_nums ends at {self.patch_nums[-1]}: the last "
                "scale must equal the latent size (image size / downsample)"
            )


@register("var-vqvae")
class MultiScaleVQVAE(Pretrained):
    """Multi-scale tokenizer: images (B, 3, H, W) in [-1, 1] <-> codes, a list of (B, pn, pn) per scale."""

    config_class = MultiScaleVQConfig
    kind = "multiscale"

    def __init__(self, config: MultiScaleVQConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.encoder_type == "patch":
            self.encoder = PatchEncoder(c.downsample, c.patch_encoder_width, c.patch_encoder_depth, c.z_channels)
        else:
            self.encoder = MSEncoder(c)
        self.decoder = MSDecoder(c)
        self.quantize = MultiScaleQuantizer(c)
        ks = c.quant_conv_ks
        self.quant_conv = nn.Conv2d(c.z_channels, c.z_channels, ks, 1, ks // 2)
        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, ks, 1, ks // 2)

    @property
    def codebook_size(self) -> int:
        return self.config.vocab_size

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def patch_nums(self) -> list[int]:
        return list(self.config.v_patch_nums)

    @property
    def image_size(self) -> int:
        return self.config.v_patch_nums[-1] * self.downsample

    def latent_grid(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if (h, w) != (self.image_size, self.image_size):
            raise ConfigError(
                f"image size {h}x{w} does not fit this multi-scale tokenizer: its v_patch_nums end at "
                f"{self.patch_nums[-1]} and the last scale must equal the latent size, so it codes "
                f"{self.image_size}x{self.image_size} images ({self.patch_nums[-1]} x downsample {self.downsample})"
            )
        return self.patch_nums[-1], self.patch_nums[-1]

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        self.latent_grid(tuple(images.shape[-2:]))
        return self.quant_conv(self.encoder(images))

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images -> codes per scale, [(B, pn, pn) for pn in v_patch_nums] (int64)."""
        return self.quantize.quantize(self.encode_latents(images))[0]

    def flatten_codes(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Codes per scale -> (B, L) in scale order (the VAR sequence)."""
        return torch.cat([c.reshape(c.shape[0], -1) for c in codes], dim=1)

    def split_codes(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(B, L) -> codes per scale (B, pn, pn)."""
        if flat.dim() != 2 or flat.shape[1] != self.config.num_tokens:
            raise ConfigError(f"flat codes must be (B, {self.config.num_tokens}), got {tuple(flat.shape)}")
        sizes = [p * p for p in self.patch_nums]
        return [c.reshape(-1, p, p) for c, p in zip(flat.split(sizes, dim=1), self.patch_nums)]

    def _as_scales(self, codes: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        dev = self.quantize.embedding.weight.device
        if isinstance(codes, torch.Tensor):
            codes = self.split_codes(codes.to(dev).long())
        codes = [torch.as_tensor(c, device=dev).long() for c in codes]
        if len(codes) != len(self.patch_nums):
            raise ConfigError(f"expected codes for {len(self.patch_nums)} scales, got {len(codes)}")
        for c, pn in zip(codes, self.patch_nums):
            if c[0].numel() != pn * pn:
                raise ConfigError(f"scale {pn}x{pn} needs {pn * pn} codes per image, got {tuple(c.shape)}")
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.codebook_size):
                raise ConfigError(f"code ids must lie in [0, {self.codebook_size - 1}]")
        return codes

    def decode_latents(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def decode(self, codes: torch.Tensor | Sequence[torch.Tensor], all_scales: bool = False):
        """Codes (list per scale, or flat (B, L)) -> images (B, 3, H, W) clamped to [-1, 1]; with
        ``all_scales`` a list: the image after each scale."""
        fhats = self.quantize.codes_to_fhat(self._as_scales(codes), all_scales)
        images = [self.decode_latents(f) for f in fhats]
        return images if all_scales else images[0]

    def reconstruct(self, images: torch.Tensor, all_scales: bool = False):
        """images -> decoded residual-quantised reconstruction (the official img_to_reconstructed_img)."""
        fhats = self.quantize.quantize(self.encode_latents(images))[1]
        return [self.decode_latents(f) for f in fhats] if all_scales else self.decode_latents(fhats[-1])

    def teacher_forcing_input(self, codes: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Codes -> VAR's inputs for scales 1..K-1, (B, L - 1, z_channels)."""
        return self.quantize.teacher_forcing_input(self._as_scales(codes))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training forward: (reconstruction (not clamped), {'codebook', 'commit'} losses)."""
        f_hat, _, losses = self.quantize(self.encode_latents(images))
        return self.decoder(self.post_quant_conv(f_hat)), losses
