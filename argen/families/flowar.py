"""The FlowAR family: scale-wise flow matching on a KL VAE's latents, MAR's VAE and token handling plus
its scales (the model in :mod:`argen.generators.flowar`, its official checkpoints in
:mod:`argen.convert.flowar`)."""
from __future__ import annotations

import argparse
import math
from typing import Any

import torch
import torch.nn.functional as F

from argen.convert.flowar import load_flowar
from argen.convert.mar import load_vae
from argen.errors import ConfigError
from argen.families import mar
from argen.families.registry import Family, arg, model_loss, official_args, official_loader, official_values
from argen.generators.flowar import FlowAR
from argen.tokenizers.kl import KLVAE

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4, decoder_embed_dim=64, decoder_depth=2,
                 decoder_num_heads=4, diffloss_d=2, diffloss_w=64),
    # width 192: FlowAR's AdaLN blocks make 256 wide 13.7M parameters, 27 MB in float16, over the bundle budget
    "small": dict(encoder_embed_dim=192, encoder_depth=4, encoder_num_heads=8, decoder_embed_dim=192, decoder_depth=4,
                  decoder_num_heads=8, diffloss_d=3, diffloss_w=192),
}


CONVERT_ARGS = (
    arg("--flowar-ckpt", required=True, help="FlowAR-S.pth / FlowAR-L.pth / FlowAR-H.pth (or a training checkpoint)"),
    arg("--vae-ckpt", required=True, help="MAR's kl16.ckpt"),
    arg("--flowar-model", default="flowar_small", help="flowar_small, flowar_large, flowar_huge"),
    *official_args("flowar", "FlowAR"),
    *official_args("vae", "AutoencoderKL (default: kl16)"),
    arg("--cfg", type=float, default=4.3, help="default guidance (S 4.3, L 2.4, H 2.4)"),
    arg("--num-steps", type=int, default=25, help="flow steps per scale (S, L 25; H 50)"),
    arg("--guidance-high", type=float, default=0.9, help="guidance interval top (S, L 0.9; H 0.7)"),
)


def convert(args: argparse.Namespace) -> tuple[FlowAR, KLVAE, dict[str, Any]]:
    flowar_args, vae_args = official_values(args, "flowar"), official_values(args, "vae")
    vae = load_vae(args.vae_ckpt, None if vae_args else "kl16", **vae_args)
    model = load_flowar(args.flowar_ckpt, None if flowar_args.get("encoder_embed_dim") else args.flowar_model,
                        weights=args.weights, **flowar_args)
    return model, vae, {"cfg_scale": args.cfg, "cfg_schedule": "linear", "num_steps": args.num_steps,
                        "guidance_high": args.guidance_high}


def doubling_scales(latent: int) -> list[int]:
    """FlowAR's scale schedule for a latent size: 1, 2, 4, ... up to it (a power of two)."""
    if latent < 1 or latent & (latent - 1):
        raise ConfigError(f"FlowAR needs a power-of-two latent size (scales double up to it), got {latent}")
    return [2**i for i in range(latent.bit_length())]


def derive_config(tok: Any, *, resolution: int, num_classes: int, class_dropout: float,
                  dropout: float) -> dict[str, Any]:
    h, _ = tok.latent_grid(resolution)
    return {**mar.derive_config(tok, resolution=resolution, num_classes=num_classes, class_dropout=class_dropout,
                                dropout=dropout), "scale": doubling_scales(h)}


def latents(model: FlowAR, tok: Any, images: torch.Tensor, sample: bool) -> torch.Tensor:
    """The VAE's scaled latents (posterior samples or means); the model splits them per scale."""
    return tok.encode(images, sample=sample)


def upsample_tokens(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(B, s*s, C) tokens of one scale -> (B, side*side, C), bicubic in latent space."""
    b, n, c = tokens.shape
    s = math.isqrt(n)
    if s == side:
        return tokens
    grid = tokens.transpose(1, 2).reshape(b, c, s, s).float()
    return F.interpolate(grid, size=(side, side), mode="bicubic").flatten(2).transpose(1, 2)


def scale_preview(pipe: Any, codes: torch.Tensor) -> torch.Tensor:
    """The current scale's tokens, upsampled to the final latent grid and decoded."""
    return mar.tokens_preview(pipe, upsample_tokens(codes, pipe.generator.latent_grid[0]))


def defaults(cfg_scale: float, top_k: int, latent_grid: tuple[int, int]) -> dict[str, Any]:
    # next-scale inputs are upsampled through the latent size, as in training
    return {"cfg_scale": cfg_scale, "cfg_schedule": "linear", "num_steps": 25, "upsample_size": latent_grid[0]}


FAMILY = Family(
    name="flowar",
    generator_class=FlowAR,
    tokenizer_kind="continuous",
    description="FlowAR transformer + flow head, with MAR's KL-16 VAE",
    load_official=official_loader(load_flowar, load_vae),
    random_weights=mar.random_on_vae(FlowAR, lambda gen: gen.flownet.final_layer.linear),  # a non-zero velocity
    convert_args=CONVERT_ARGS,
    convert=convert,
    train_presets=TRAIN_PRESETS,
    size_args=mar.SIZE_ARGS,
    derived=mar.DERIVED | {"scale"},
    derive_config=derive_config,
    train_targets=latents,
    train_loss=model_loss,
    sample_defaults=defaults,
    decode=mar.decode_tokens,
    bind=mar.check_vae,
    preview=scale_preview,
)
