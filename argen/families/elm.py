"""The ELM family: an AR language model over a binary autoencoder's bits read as sub-tokens (the model
in :mod:`argen.generators.elm`, the BAE in :mod:`argen.tokenizers.binary`, the released files in
:mod:`argen.convert.elm`); ``--kind elm`` trains one on a BAE from ``argen train tokenizer --kind binary``."""
from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from argen.convert.elm import load_bae, load_elm, parse_release
from argen.errors import ConfigError
from argen.families.registry import Family, arg, official_args, official_values
from argen.generators.elm import ELM, ELMConfig
from argen.samplers.logits import CFG_SCHEDULES
from argen.tokenizers.binary import BinaryAEConfig, BinaryAutoEncoder

# sample_fid.sh, the paper's FID protocol: cfg 4 on the linear ramp, top-k 1000, temperature 1
ELM_FID = {"cfg_scale": 4.0, "cfg_schedule": "linear", "top_k": 1000, "top_p": 1.0, "temperature": 1.0}

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=64, n_layer=2, n_head=4, multiple_of=32),
    "small": dict(dim=256, n_layer=6, n_head=8, multiple_of=64),
}


def paired_with_bae(load_lm: Callable[..., Any]) -> Callable[..., tuple[Any, BinaryAutoEncoder]]:
    """A ``load_official`` for an ELM LM (AR or masked): the LM, then its BAE read with the LM's split
    (bits = token_each x code_dim, checked on binding)."""

    def load(paths: dict[str, Any], generator_args: dict[str, Any], tokenizer_args: dict[str, Any],
             device, dtype) -> tuple[Any, BinaryAutoEncoder]:
        gen = load_lm(paths["generator"], **generator_args, device=device, dtype=dtype)
        return gen, load_bae(paths["tokenizer"], token_each=gen.config.token_each, **tokenizer_args, device=device)

    return load


def random_bae(config: Any, tokenizer_args: dict[str, Any]) -> BinaryAutoEncoder:
    """A randomly initialised BAE of the released shape with the bits and split an LM's ``config`` reads."""
    return BinaryAutoEncoder(BinaryAEConfig(**{"codebook_size": config.token_each * config.code_dim,
                                               "token_each": config.token_each, **tokenizer_args}))


def random_weights(generator_args: dict[str, Any], tokenizer_args: dict[str, Any]) -> tuple[ELM, BinaryAutoEncoder]:
    """The release's architecture, every weight N(0, 0.02) (the official init zeroes the heads: flat logits),
    and a randomly initialised BAE of the released shape with the matching bits."""
    args = dict(generator_args)
    args.update(parse_release(args.pop("release")) if "release" in args else {})
    gen = ELM(ELMConfig.preset(args.pop("preset", None), **args))
    gen.init_weights()
    for out in gen.output.modules():
        if isinstance(out, torch.nn.Linear):
            torch.nn.init.normal_(out.weight, std=0.02)
    tok = random_bae(gen.config, tokenizer_args)
    return gen.bind_tokenizer(tok), tok


# what `argen convert elm` and `elm-mlm` share: the BAE's layout and custom sizes of both files
PAIR_ARGS = (
    arg("--no-norm-first", action="store_true", help="a BAE trained without norm_first (the releases use it)"),
    *official_args("gpt", "ModelArgs"),
    *official_args("bae", "BAE hyper-parameter"),
)

CONVERT_ARGS = (
    arg("--gpt-ckpt", required=True, help="the LM, e.g. gpt/L-2-12.pth of xuantonglll/ELM"),
    arg("--bae-ckpt", required=True, help="its binary autoencoder, e.g. bae/bae_24/binaryae_ema.th "
                                          "(bits = token_each x code_dim)"),
    arg("--release", help="check the LM is this release (<size>-<token_each>-<code_dim>, e.g. L-2-12); "
                          "default: read off the file"),
    *PAIR_ARGS,
    arg("--cfg", type=float, default=ELM_FID["cfg_scale"], help="default guidance written to the model"),
    arg("--cfg-schedule", default=ELM_FID["cfg_schedule"], choices=[s for s in CFG_SCHEDULES if s != "var"],
        help="default guidance ramp (sample_fid.sh: linear; inference.sh: constant)"),
    arg("--top-k", type=int, default=ELM_FID["top_k"], help="default top-k per sub-token head (sample_fid.sh: "
                                                             "1000; inference.sh: 400)"),
)


def convert(args: argparse.Namespace) -> tuple[ELM, BinaryAutoEncoder, dict[str, Any]]:
    gen = load_elm(args.gpt_ckpt, args.release, weights=args.weights, **official_values(args, "gpt"))
    tok = load_bae(args.bae_ckpt, token_each=gen.config.token_each, norm_first=not args.no_norm_first,
                   **official_values(args, "bae"))
    return gen, tok, {**ELM_FID, "cfg_scale": args.cfg, "cfg_schedule": args.cfg_schedule, "top_k": args.top_k}


def derive_config(tok: BinaryAutoEncoder, *, resolution: int, num_classes: int, class_dropout: float,
                  dropout: float) -> dict[str, Any]:
    h, w = tok.latent_grid(resolution)
    if h != w:
        raise ConfigError("ELM's 2D RoPE needs a square latent grid")
    return dict(token_each=tok.token_each, code_dim=tok.code_dim, block_size=h * w, num_classes=num_classes,
                class_dropout_prob=class_dropout, token_dropout_p=dropout, resid_dropout_p=dropout,
                ffn_dropout_p=dropout)


# the config fields a run takes from the BAE, the data and the flags (both ELM families' derive_config)
DERIVED = frozenset({"token_each", "code_dim", "block_size", "num_classes", "class_dropout_prob", "token_dropout_p",
                     "resid_dropout_p", "ffn_dropout_p"})


def bit_codes(model: Any, tokenizer: BinaryAutoEncoder, images: torch.Tensor, sample: bool) -> torch.Tensor:
    """The LM's targets (B, h * w, token_each): Bernoulli-drawn bits (the official training data) or,
    ``sample`` False, the bits thresholded at 0.5."""
    return tokenizer.encode(images, sample=sample).flatten(1, 2)


def elm_defaults(cfg_scale: float, top_k: int, latent_grid: tuple[int, int]) -> dict[str, Any]:
    return {**ELM_FID, "cfg_scale": cfg_scale, "top_k": top_k}


FAMILY = Family(
    name="elm",
    generator_class=ELM,
    tokenizer_kind="bits",
    description="ELM: AR LM over a binary autoencoder's bits, split into sub-tokens (xuantonglll/ELM)",
    load_official=paired_with_bae(load_elm),
    random_weights=random_weights,
    convert_args=CONVERT_ARGS,
    convert=convert,
    train_presets=TRAIN_PRESETS,
    size_args=(("dim",), ("n_layer",), ("n_head",)),
    derived=DERIVED,
    derive_config=derive_config,
    train_targets=bit_codes,
    sample_defaults=elm_defaults,
    bind=lambda generator, tok: generator.bind_tokenizer(tok),
)
