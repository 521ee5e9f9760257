"""The VAR family: next-scale prediction on a multi-scale VQ-VAE's codes (the model in
:mod:`argen.generators.var`, its official checkpoints in :mod:`argen.convert.var`)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from argen.convert.var import load_var, load_var_vae
from argen.families.registry import Family, arg, official_args, official_values
from argen.generators.var import VAR
from argen.tokenizers.msvq import MultiScaleVQConfig, MultiScaleVQVAE

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(depth=2, embed_dim=64, num_heads=4),
    "small": dict(depth=5, embed_dim=256, num_heads=8, shared_aln=True),
}


def load_official(paths, generator_args, tokenizer_args, device, dtype) -> tuple[VAR, MultiScaleVQVAE]:
    vae = load_var_vae(paths["tokenizer"], **tokenizer_args, device=device)
    gen = load_var(paths["generator"], **generator_args, vae=vae, device=device, dtype=dtype)
    return gen, vae


def random_on_msvq(generator_class: type) -> Callable[..., tuple[Any, MultiScaleVQVAE]]:
    """A ``random_weights`` for VAR (or a student of it): the presets' architectures, the training init, bound."""

    def build(generator_args: dict[str, Any], tokenizer_args: dict[str, Any]) -> tuple[Any, MultiScaleVQVAE]:
        tok = MultiScaleVQVAE(MultiScaleVQConfig.preset(tokenizer_args["preset"]))
        gen = generator_class(generator_class.config_class.preset(generator_args["preset"]))
        gen.init_weights()
        return gen.bind_tokenizer(tok), tok

    return build


CONVERT_ARGS = (
    arg("--var-ckpt", required=True, help="var_d16.pth ... (or a training checkpoint)"),
    arg("--vae-ckpt", required=True, help="vae_ch160v4096z32.pth"),
    arg("--var-model", default="d16", help="d16, d20, d24, d30, d36"),
    arg("--vae-model", default="vae_ch160v4096z32", help="vae_ch160v4096z32 or vae_ch160v4096z32-512 (d36)"),
    *official_args("var", "VAR"),
    *official_args("vae", "VQVAE"),
    arg("--cfg", type=float, default=4.0, help="default guidance written to the model (VAR's ramp)"),
    arg("--top-k", type=int, default=900),
    arg("--top-p", type=float, default=0.95),
)


def convert(args: argparse.Namespace) -> tuple[VAR, MultiScaleVQVAE, dict[str, Any]]:
    var_args, vae_args = official_values(args, "var"), official_values(args, "vae")
    vae = load_var_vae(args.vae_ckpt, None if vae_args else args.vae_model, **vae_args)
    var = load_var(args.var_ckpt, None if var_args.get("depth") else args.var_model, vae=vae, weights=args.weights,
                   **var_args)
    return var, vae, {"cfg_scale": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "temperature": 1.0}


def derive_config(tok: MultiScaleVQVAE, *, resolution: int, num_classes: int, class_dropout: float,
                  dropout: float) -> dict[str, Any]:
    return dict(vocab_size=tok.codebook_size, num_classes=num_classes, Cvae=tok.config.z_channels,
                patch_nums=tok.patch_nums, cond_drop_rate=class_dropout, drop_rate=dropout)


def scale_codes(model: VAR, tok: MultiScaleVQVAE, images, sample: bool):
    """The codes of every scale, flat in scale order: VAR's sequence."""
    return tok.flatten_codes(tok.encode(images))


def decode(generator: VAR, tok: MultiScaleVQVAE, codes):
    return tok.decode(codes)


def scale_preview(pipe: Any, codes: torch.Tensor) -> torch.Tensor | None:
    """The image of the scales done so far (the codes of the complete scales, summed up)."""
    tok = pipe.tokenizer
    quant, dev = tok.quantize, pipe.tokenizer_device
    f_hat, offset = None, 0
    for si, pn in enumerate(tok.patch_nums):
        if offset + pn * pn > codes.shape[1]:
            break
        ids = codes[:, offset : offset + pn * pn].reshape(-1, pn, pn).to(dev)
        contrib = quant.upsample_scale(quant.lookup(ids, pn), si)
        f_hat = contrib if f_hat is None else f_hat + contrib
        offset += pn * pn
    return None if f_hat is None else tok.decode_latents(f_hat).clamp(-1, 1)


def bind(generator: VAR, tok: MultiScaleVQVAE) -> None:
    generator.bind_tokenizer(tok)


FAMILY = Family(
    name="var",
    generator_class=VAR,
    tokenizer_kind="multiscale",
    description="VAR transformer + multi-scale VQ-VAE",
    load_official=load_official,
    random_weights=random_on_msvq(VAR),
    convert_args=CONVERT_ARGS,
    convert=convert,
    train_presets=TRAIN_PRESETS,
    size_args=(("embed_dim",), ("depth",), ("num_heads",)),
    derived=frozenset({"vocab_size", "num_classes", "Cvae", "patch_nums", "cond_drop_rate", "drop_rate"}),
    derive_config=derive_config,
    train_targets=scale_codes,
    decode=decode,
    bind=bind,
    preview=scale_preview,
)
