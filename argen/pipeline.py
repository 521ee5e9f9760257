"""ARPipeline: tokenizer + generator + sampler -> PIL images.

    pipe = argen.load("llamagen-gpt-b")            # or a folder written by save_pretrained
    images = pipe.generate(classes=[207, 360], seed=0, cfg_scale=4.0, top_k=2000)
    pipe.last_stats.as_dict()                      # forward passes, tokens/s, seed, ...
    pipe.save_pretrained("my-model")               # config.json + safetensors per component
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from argen.version import __version__
from argen.errors import ConfigError
from argen.images import to_pil
from argen.components import load_component
from argen.modeling import Pretrained, read_json
from argen.tokenizers.loading import load_tokenizer

INDEX_NAME = "model_index.json"


class ARPipeline:
    """Everything needed to turn conditions into images with one model."""

    def __init__(
        self,
        generator: Pretrained,
        tokenizer: Pretrained,
        *,
        image_size: int | None = None,
        defaults: dict[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        self.generator = generator.eval()
        self.tokenizer = tokenizer.eval()
        if getattr(generator, "kind", None) == "scale":  # a scale-wise model builds its inputs with the tokenizer
            generator.bind_tokenizer(tokenizer)
            image_size = image_size or tokenizer.image_size
        # the tokenizer's latent grid the generator works on (MAR may pack p x p latents per token)
        grid = getattr(generator, "latent_grid" if generator.kind == "continuous" else "token_grid", None)
        if hasattr(generator, "check_tokenizer"):  # continuous-token models check the VAE they decode with
            generator.check_tokenizer(tokenizer)
        self.image_size = image_size or (grid[0] * tokenizer.downsample if grid else None)
        if grid and self.image_size and tokenizer.latent_grid(self.image_size) != tuple(grid):
            raise ConfigError(
                f"tokenizer grid {tokenizer.latent_grid(self.image_size)} at {self.image_size}px does not "
                f"match the generator's token grid {tuple(grid)}"
            )
        self.defaults = dict(defaults or {})
        self.class_names = list(class_names) if class_names is not None else None
        self.name = name
        self.last_stats = None
        self.last_codes: torch.Tensor | None = None  # the codes behind the last generated images

    # -- devices -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ARPipeline":
        """Move both models; ``dtype`` applies to the generator (the tokenizer stays float32 on CPU)."""
        self.generator.to(device=device, dtype=dtype)
        tok_dtype = dtype if dtype is not None and torch.device(device or self.device).type == "cuda" else None
        self.tokenizer.to(device=device, dtype=tok_dtype)
        return self

    # -- generation --------------------------------------------------------------------------
    def resolve_classes(self, classes: Sequence[int | str] | int | str) -> list[int]:
        """Class ids from ids or (where the model has them) class names."""
        if isinstance(classes, (int, str)):
            classes = [classes]
        out = []
        for c in classes:
            if isinstance(c, str) and not c.lstrip("-").isdigit():
                if not self.class_names or c not in self.class_names:
                    known = f"; known names: {', '.join(self.class_names)}" if self.class_names else ""
                    raise ConfigError(f"unknown class name {c!r}{known}")
                out.append(self.class_names.index(c))
            else:
                out.append(int(c))
        return out

    def generate(
        self,
        classes: Sequence[int | str] | int | str,
        *,
        seed: int | None = None,
        sampler: str = "ar",
        batch_size: int | None = None,
        output_type: str = "pil",
        progress: bool = False,
        **options: Any,
    ) -> list[Image.Image] | torch.Tensor:
        """Generate one image per entry of ``classes``. Sampling options (cfg_scale, cfg_interval,
        temperature, top_k, top_p, greedy, sampler-specific ones) default to the model's card.
        ``output_type`` 'pil' (list of images), 'pt' (tensor in [-1, 1]) or 'codes'."""
        from argen import samplers

        if output_type not in ("pil", "pt", "codes"):
            raise ConfigError(f"output_type must be 'pil', 'pt' or 'codes', got {output_type!r}")
        ids = self.resolve_classes(classes)
        opts = {**self.defaults, **options}
        batch_size = batch_size or len(ids) or 1
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        rng, used_seed = samplers.make_rng(seed, self.device)
        codes, stats = [], None
        for i in range(0, len(ids), batch_size):
            c, s = samplers.sample(
                self.generator, ids[i : i + batch_size], sampler=sampler, generator=rng, progress=progress, **opts
            )
            codes.append(c)
            stats = s if stats is None else stats.merge(s)
        if not codes:
            raise ConfigError("no classes given: nothing to generate")
        stats.seed = used_seed
        self.last_stats = stats
        all_codes = self.last_codes = torch.cat(codes)
        if output_type == "codes":
            return all_codes
        if stats.latents is not None:  # the sampler's image is not a function of its codes (more_smooth)
            with torch.inference_mode():
                images = self.tokenizer.decode_latents(stats.latents.to(self.tokenizer_device)).clamp(-1, 1)
        else:
            images = self.decode(all_codes)
        return images if output_type == "pt" else to_pil(images)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Codes (B, N) -> images (B, 3, H, W) in [-1, 1] (clamped). Scale-wise codes are flat, in scale
        order; continuous tokens (B, N, C) are unpatchified to the tokenizer's latents."""
        dev = self.tokenizer_device
        if self.tokenizer.kind == "multiscale":
            outs = [self.tokenizer.decode(codes[i : i + batch_size].to(dev)) for i in range(0, codes.shape[0], batch_size)]
            return torch.cat(outs).clamp(-1, 1)
        if self.tokenizer.kind == "continuous":  # tokens (B, N, C) -> latents -> images
            outs = [self.tokenizer.decode(self.generator.unpatchify(codes[i : i + batch_size]).to(dev))
                    for i in range(0, codes.shape[0], batch_size)]
            return torch.cat(outs).clamp(-1, 1)
        grid = tuple(self.generator.token_grid)
        outs = [
            self.tokenizer.decode(codes[i : i + batch_size].view(-1, *grid).to(dev), grid)
            for i in range(0, codes.shape[0], batch_size)
        ]
        return torch.cat(outs).clamp(-1, 1)

    @property
    def tokenizer_device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    # -- save / load -------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, *, generator_dtype: torch.dtype | None = None) -> Path:
        """Write the folder; ``generator_dtype`` (e.g. torch.float16) stores the generator's weights in
        that type (they are cast back on loading)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.generator.save_pretrained(directory / "generator", storage_dtype=generator_dtype)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        index = {
            "_argen_version": __version__,
            "name": self.name,
            "generator": "generator",
            "tokenizer": "tokenizer",
            "image_size": self.image_size,
            "defaults": self.defaults,
            "class_names": self.class_names,
        }
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> "ARPipeline":
        directory = Path(directory)
        index = read_json(directory / INDEX_NAME, f"{directory} is not an argen pretrained folder (no {INDEX_NAME})")
        gen = load_component(directory / index.get("generator", "generator"), device=device, dtype=dtype)
        tok = load_tokenizer(directory / index.get("tokenizer", "tokenizer"), device=device)
        return cls(
            gen,
            tok,
            image_size=index.get("image_size"),
            defaults=index.get("defaults"),
            class_names=index.get("class_names"),
            name=index.get("name") or directory.name,
        )

