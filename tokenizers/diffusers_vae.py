"""Any diffusers ``AutoencoderKL`` (Stable Diffusion's VAEs, ...) as an argen continuous tokenizer.

diffusers owns the network and its weights; this wrapper adds argen's tokenizer protocol and the latent
scaling the diffusion pipelines do outside the VAE: latents = (z - shift_factor) * scaling_factor.

    vae = DiffusersVAE.from_diffusers("stabilityai/sd-vae-ft-ema")   # or a local folder
    latents = vae.encode(images)            # (B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8)
    images = vae.decode(latents)
    vae.save_pretrained("pipe/tokenizer")   # a diffusers folder whose config carries argen's scaling

A pipeline folder may hold such a folder as its tokenizer, and ``argen train generator --tokenizer``
takes one (or a hub id): :func:`argen.tokenizers.load_tokenizer` tells the two kinds of folder apart.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from argen.errors import CheckpointError, ConfigError, DownloadError
from argen.tokenizers.blocks import latent_grid
from argen.tokenizers.kl import sample_gaussian


class DiffusersVAE(nn.Module):
    """Continuous tokenizer around a ``diffusers.AutoencoderKL`` (kept as ``self.vae``)."""

    kind = "continuous"
    registry_name = "diffusers-vae"

    def __init__(self, vae: nn.Module, scaling_factor: float | None = None, shift_factor: float | None = None) -> None:
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else cfg.scaling_factor)
        if shift_factor is None:
            shift_factor = getattr(cfg, "shift_factor", None) or 0.0
        self.shift_factor = float(shift_factor)
        if not self.scaling_factor > 0:
            raise ConfigError(f"scaling_factor must be > 0, got {self.scaling_factor}")

    @classmethod
    def from_diffusers(
        cls,
        path_or_id: str | os.PathLike,
        subfolder: str | None = None,
        scaling_factor: float | None = None,
        **kwargs: Any,
    ) -> "DiffusersVAE":
        """Load ``AutoencoderKL.from_pretrained(path_or_id, subfolder=...)`` (a local folder or a hub id;
        ``kwargs`` go to diffusers, e.g. torch_dtype); the scaling factor defaults to the model's own."""
        from diffusers import AutoencoderKL

        local = Path(path_or_id).exists()
        try:
            vae = AutoencoderKL.from_pretrained(str(path_or_id), subfolder=subfolder, **kwargs)
        except (OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = f"{path_or_id}" + (f" (subfolder {subfolder})" if subfolder else "")
            if local:
                raise CheckpointError(f"{where} is not a diffusers AutoencoderKL folder: {reason}") from None
            raise DownloadError(
                f"cannot load the diffusers AutoencoderKL {where} from the hub ({reason}); if you are offline, "
                "download it elsewhere and pass its local folder"
            ) from None
        return cls(vae.eval(), scaling_factor=scaling_factor)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """A diffusers folder (config.json + safetensors) whose config holds this wrapper's scaling and
        shift, so :meth:`from_diffusers` on it gives the same latents."""
        directory = Path(directory)
        self.vae.save_pretrained(directory, safe_serialization=True)
        config_file = directory / "config.json"
        config = json.loads(config_file.read_text())
        config.update(scaling_factor=self.scaling_factor, shift_factor=self.shift_factor)
        config_file.write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_grid(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        return latent_grid(image_size, self.downsample)

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images -> (mean, std) of the posterior, unscaled."""
        c = int(self.vae.config.in_channels)
        if images.dim() != 4 or images.shape[1] != c:
            raise ConfigError(f"images must be (B, {c}, H, W), got {tuple(images.shape)}")
        self.latent_grid(tuple(images.shape[-2:]))
        dist = self.vae.encode(images).latent_dist
        return dist.mean, dist.std

    def encode(
        self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """images -> (posterior mean or sample - shift_factor) * scaling_factor."""
        mean, std = self.posterior(images)
        z = sample_gaussian(mean, std, generator) if sample else mean
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, latent_channels, h, w) -> images, about [-1, 1] (not clamped)."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ConfigError(
                f"latents must be (B, {self.latent_channels}, h, w) for this VAE, got {tuple(latents.shape)}"
            )
        return self.vae.decode(latents / self.scaling_factor + self.shift_factor).sample
