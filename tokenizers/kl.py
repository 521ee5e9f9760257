"""MAR's KL-16 VAE: a continuous tokenizer whose latents are the (scaled) mean or a sample of a diagonal
Gaussian posterior.

Key names and numerics follow the official MAR ``models/vae.py`` (the LDM ``AutoencoderKL``), so the
released ``kl16.ckpt`` loads strictly (``argen.convert.mar.load_vae``) and gives identical latents and
images. Latents are multiplied by ``scaling_factor`` (0.2325 for KL-16, as MAR does before modelling).

    vae = KLVAE(KLConfig.preset("kl16"))
    latents = vae.encode(images)                    # (B, 3, 256, 256) in [-1, 1] -> (B, 16, 16, 16)
    images = vae.decode(latents)                    # -> (B, 3, 256, 256), about [-1, 1] (not clamped)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from argen.errors import ConfigError
from argen.modeling import Pretrained, build_config, register
from argen.tokenizers.blocks import AttnBlock, latent_grid
from argen.tokenizers.taming import Decoder, Encoder, TamingArch

PRESETS: dict[str, dict[str, Any]] = {
    "kl16": dict(),  # MAR's AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4)), 256px -> 16x16x16
}
LOGVAR_RANGE = (-30.0, 20.0)  # the official DiagonalGaussianDistribution clamp


@dataclass
class KLConfig:
    """The official ``AutoencoderKL``/``Encoder`` argument names; ``norm_groups`` (official 32) is an
    option for small models and ``scaling_factor`` is MAR's latent scale."""

    embed_dim: int = 16
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    dropout: float = 0.0
    norm_groups: int = 32
    double_z: bool = True
    scaling_factor: float = 0.2325

    def __post_init__(self) -> None:
        self.ch_mult = [int(m) for m in self.ch_mult]
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ConfigError(f"ch_mult must be a non-empty list of positive multipliers, got {self.ch_mult}")
        if self.embed_dim < 1 or self.num_res_blocks < 1:
            raise ConfigError(f"embed_dim and num_res_blocks must be >= 1, got {self.embed_dim}, {self.num_res_blocks}")
        widths = [self.ch * m for m in self.ch_mult] + [self.ch]
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(
                f"channel widths {sorted(set(widths))} must be multiples of norm_groups={self.norm_groups}"
            )
        if not self.double_z:
            raise ConfigError("double_z=False is not supported: the KL VAE's encoder must output mean and log-variance")
        if not self.scaling_factor > 0:
            raise ConfigError(f"scaling_factor must be > 0, got {self.scaling_factor}")

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "KLConfig":
        return build_config(cls, PRESETS, name, overrides, "KL VAE")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def sample_gaussian(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """mean + std * N(0, 1), the noise drawn in float32 on the generator's device (a CPU generator, like
    the official sampler's CPU draw, gives the same latents on every device) or, without one, the mean's."""
    device = generator.device if generator is not None else mean.device
    noise = torch.randn(mean.shape, generator=generator, device=device, dtype=torch.float32)
    return mean + std * noise.to(mean)


@register("mar-kl")
class KLVAE(Pretrained):
    """Continuous tokenizer: images (B, 3, H, W) in [-1, 1] <-> latents (B, embed_dim, H/16, W/16)."""

    config_class = KLConfig
    kind = "continuous"

    def __init__(self, config: KLConfig) -> None:
        super().__init__()
        self.config = c = config
        # MAR: attention after the lowest encoder level's ResBlocks and in both mid blocks, none per
        # decoder level (the official decoder has attn_resolutions=())
        arch = TamingArch(c.ch, tuple(c.ch_mult), c.num_res_blocks, c.dropout, c.norm_groups, AttnBlock,
                          encoder_attn=True, decoder_attn=False, mid_attn=True)
        self.encoder = Encoder(arch, 2 * c.embed_dim)
        self.decoder = Decoder(arch, c.embed_dim)
        self.quant_conv = nn.Conv2d(2 * c.embed_dim, 2 * c.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.embed_dim, 1)

    @property
    def latent_channels(self) -> int:
        return self.config.embed_dim

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    def latent_grid(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        return latent_grid(image_size, self.downsample)

    def posterior_parameters(self, images: torch.Tensor) -> torch.Tensor:
        """images -> (B, 2 * embed_dim, h, w): mean then log-variance (official ``encode().parameters``)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        self.latent_grid(tuple(images.shape[-2:]))
        return self.quant_conv(self.encoder(images))

    def _mean_logvar(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.posterior_parameters(images).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images -> (mean, std) of the posterior, unscaled (the official DiagonalGaussianDistribution)."""
        mean, logvar = self._mean_logvar(images)
        return mean, torch.exp(0.5 * logvar)

    def encode(
        self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """images -> scaling_factor * (posterior mean, or a sample of the posterior with ``sample``)."""
        mean, std = self.posterior(images)
        z = sample_gaussian(mean, std, generator) if sample else mean
        return z * self.scaling_factor

    def _decode_unscaled(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, embed_dim, h, w) -> images (B, 3, h * 16, w * 16), about [-1, 1] (not clamped)."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ConfigError(
                f"latents must be (B, {self.latent_channels}, h, w) for this VAE (embed_dim={self.latent_channels}), "
                f"got {tuple(latents.shape)}"
            )
        return self._decode_unscaled(latents / self.scaling_factor)

    def forward(
        self, images: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training: (reconstruction of a posterior sample (or the mean), {'kl'}: the KL divergence to
        N(0, I) summed over C, H, W and averaged over the batch, as LDM)."""
        mean, logvar = self._mean_logvar(images)
        var = torch.exp(logvar)
        z = sample_gaussian(mean, torch.exp(0.5 * logvar), generator) if sample else mean
        kl = 0.5 * (mean.square() + var - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
        return self._decode_unscaled(z), {"kl": kl}
