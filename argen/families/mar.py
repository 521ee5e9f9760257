"""The MAR family: masked generation of a KL VAE's continuous tokens with a per-token diffusion head (the
model in :mod:`argen.generators.mar`, its official checkpoints in :mod:`argen.convert.mar`)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from argen.convert.mar import load_mar, load_vae
from argen.families.registry import Family, arg, model_loss, official_args, official_loader, official_values
from argen.generators.mar import MAR
from argen.tokenizers.kl import KLVAE, KLConfig

# the official evaluation protocol (README FIDs): 256 iterations, 100 diffusion steps, linear cfg ramp
MAR_EVAL = {"cfg_scale": 2.9, "cfg_schedule": "linear", "temperature": 1.0, "num_iter": 256, "diffusion_steps": 100}

_SMALL_MODEL = dict(noise_schedule="linear", pos_embed_init="sincos", mask_ratio_dist="cosine", mask_ratio_min=0.0,
                    attn_bias="distance", rope="2d", x0_loss_weight=1.0)
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4, decoder_embed_dim=64, decoder_depth=2,
                 decoder_num_heads=4, buffer_size=4, diffloss_d=2, diffloss_w=64, num_sampling_steps="20",
                 **_SMALL_MODEL),
    "small": dict(encoder_embed_dim=256, encoder_depth=4, encoder_num_heads=8, decoder_embed_dim=256, decoder_depth=4,
                  decoder_num_heads=8, buffer_size=16, diffloss_d=3, diffloss_w=256, num_sampling_steps="50",
                  **_SMALL_MODEL),
}  # what a small MAR from scratch needs: argen's extensions (MARConfig's fenced block; all but x0_head add no
# parameters); what they measured is in assets/shapes-mar/README.md ("Why the extensions").
# the CLI's --dim/--depth/--heads set the encoder and the decoder alike (FlowAR's names are the same)
SIZE_ARGS = (("encoder_embed_dim", "decoder_embed_dim"), ("encoder_depth", "decoder_depth"),
             ("encoder_num_heads", "decoder_num_heads"))
# what a continuous model takes from the VAE, the data and the run's flags (FlowAR: these and its scales)
DERIVED = frozenset({"img_size", "vae_stride", "vae_embed_dim", "class_num", "label_drop_prob", "attn_dropout",
                     "proj_dropout"})


def random_on_vae(generator_class: type,
                  head_output: Callable[[Any], torch.nn.Linear]) -> Callable[..., tuple[Any, KLVAE]]:
    """A ``random_weights`` for a model of a KL VAE's latents: the preset's architectures, the training
    init, and the head's zero-initialised output layer (``head_output``) drawn, so it predicts something."""

    def build(generator_args: dict[str, Any], tokenizer_args: dict[str, Any]) -> tuple[Any, KLVAE]:
        tok = KLVAE(KLConfig.preset(tokenizer_args["preset"]))
        gen = generator_class(generator_class.config_class.preset(generator_args["preset"]))
        gen.init_weights()
        torch.nn.init.normal_(head_output(gen).weight, std=0.02)
        return gen, tok

    return build


CONVERT_ARGS = (
    arg("--mar-ckpt", required=True, help="checkpoint-last.pth of mar_base / mar_large / mar_huge"),
    arg("--vae-ckpt", required=True, help="kl16.ckpt"),
    arg("--mar-model", default="mar_base", help="mar_base, mar_large, mar_huge"),
    *official_args("mar", "MAR"),
    *official_args("vae", "AutoencoderKL"),
    arg("--cfg", type=float, default=2.9, help="default guidance written to the model (B 2.9, L 3.0, H 3.2)"),
    arg("--cfg-schedule", default="linear", choices=["linear", "constant"]),
)


def convert(args: argparse.Namespace) -> tuple[MAR, KLVAE, dict[str, Any]]:
    mar_args, vae_args = official_values(args, "mar"), official_values(args, "vae")
    vae = load_vae(args.vae_ckpt, None if vae_args else "kl16", **vae_args)
    mar = load_mar(args.mar_ckpt, None if mar_args.get("encoder_embed_dim") else args.mar_model, weights=args.weights,
                   **mar_args)
    return mar, vae, {**MAR_EVAL, "cfg_scale": args.cfg, "cfg_schedule": args.cfg_schedule}


def derive_config(tok: Any, *, resolution: int, num_classes: int, class_dropout: float,
                  dropout: float) -> dict[str, Any]:
    return dict(img_size=resolution, vae_stride=tok.downsample, vae_embed_dim=tok.latent_channels,
                class_num=num_classes, label_drop_prob=class_dropout, attn_dropout=dropout, proj_dropout=dropout)


def patch_tokens(model: MAR, tok: Any, images: torch.Tensor, sample: bool) -> torch.Tensor:
    """The VAE's latents (posterior samples or means), packed p x p per token."""
    return model.patchify(tok.encode(images, sample=sample))


def check_vae(generator: Any, tok: Any) -> None:
    generator.check_tokenizer(tok)


def decode_tokens(generator: Any, tok: Any, codes: torch.Tensor) -> torch.Tensor:
    """Tokens (B, N, C) -> the VAE's latents -> images."""
    return tok.decode(generator.unpatchify(codes))


def tokens_preview(pipe: Any, codes: torch.Tensor) -> torch.Tensor:
    """The tokens done so far (unknown ones are 0), decoded."""
    return pipe.decode(codes.to(next(pipe.tokenizer.parameters()).dtype))


def defaults(cfg_scale: float, top_k: int, latent_grid: tuple[int, int]) -> dict[str, Any]:
    return {"cfg_scale": cfg_scale, "cfg_schedule": "linear", "temperature": 1.0, "num_iter": 16}


FAMILY = Family(
    name="mar",
    generator_class=MAR,
    tokenizer_kind="continuous",
    description="MAR transformer + diffusion head, with the KL-16 VAE",
    load_official=official_loader(load_mar, load_vae),
    random_weights=random_on_vae(MAR, lambda gen: gen.diffloss.net.final_layer.linear),  # a non-zero noise prediction
    convert_args=CONVERT_ARGS,
    convert=convert,
    train_presets=TRAIN_PRESETS,
    size_args=SIZE_ARGS,
    derived=DERIVED,
    derive_config=derive_config,
    train_targets=patch_tokens,
    train_loss=model_loss,
    sample_defaults=defaults,
    decode=decode_tokens,
    bind=check_vae,
    preview=tokens_preview,
)
