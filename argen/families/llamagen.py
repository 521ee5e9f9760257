"""The LlamaGen family: a token-wise GPT on a VQ tokenizer's codes (the model in
:mod:`argen.generators.llamagen`, its official checkpoints in :mod:`argen.convert.llamagen`)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from argen.convert.llamagen import load_gpt, load_vq
from argen.errors import ConfigError
from argen.families.registry import Family, arg, official_args, official_loader, official_values
from argen.generators.llamagen import LlamaGen
from argen.tokenizers.vq import VQConfig, VQTokenizer

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=64, n_layer=2, n_head=4, multiple_of=32),
    "small": dict(dim=256, n_layer=6, n_head=8, multiple_of=64),
}


def random_on_vq(generator_class: type) -> Callable[..., tuple[Any, VQTokenizer]]:
    """A ``random_weights`` for a GPT (or a student of one) on a VQ tokenizer: the preset's architecture, the
    training init with the output layer drawn (the training init zeroes it: all logits equal), bound."""

    def build(generator_args: dict[str, Any], tokenizer_args: dict[str, Any]) -> tuple[Any, VQTokenizer]:
        tok = VQTokenizer(VQConfig.preset(tokenizer_args["preset"]))
        args = dict(generator_args)
        gen = generator_class(generator_class.config_class.preset(args.pop("preset"), **args))
        gen.init_weights()
        torch.nn.init.normal_(gen.output.weight, std=0.02)
        return gen.bind_tokenizer(tok), tok

    return build


CONVERT_ARGS = (
    arg("--gpt-ckpt", required=True),
    arg("--vq-ckpt", required=True),
    arg("--gpt-model", default="GPT-B", help="GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-3B"),
    arg("--vq-model", default="VQ-16", help="VQ-16 or VQ-8"),
    arg("--image-size", type=int, default=256, help="256 or 384 (sets block_size)"),
    *official_args("gpt", "ModelArgs"),
    *official_args("vq", "VQ"),
    arg("--cfg", type=float, default=4.0, help="default guidance written to the model"),
    arg("--top-k", type=int, default=2000, help="default top-k written to the model"),
)


def convert(args: argparse.Namespace) -> tuple[LlamaGen, VQTokenizer, dict[str, Any]]:
    gpt_args, vq_args = official_values(args, "gpt"), official_values(args, "vq")
    if args.image_size and "block_size" not in gpt_args:
        ds = 2 ** (len(vq_args.get("encoder_ch_mult",
                                   [1, 1, 2, 2, 4] if args.vq_model == "VQ-16" else [1, 2, 2, 4])) - 1)
        gpt_args["block_size"] = (args.image_size // ds) ** 2
    preset = args.gpt_model if not gpt_args.get("dim") else None
    gen = load_gpt(args.gpt_ckpt, preset, weights=args.weights, **gpt_args)
    tok = load_vq(args.vq_ckpt, args.vq_model if not vq_args else None, **vq_args)
    return gen, tok, {"cfg_scale": args.cfg, "top_k": args.top_k, "top_p": 1.0, "temperature": 1.0}


def derive_config(tok: VQTokenizer, *, resolution: int, num_classes: int, class_dropout: float,
                  dropout: float) -> dict[str, Any]:
    h, w = tok.latent_grid(resolution)
    if h != w:
        raise ConfigError("LlamaGen's 2D RoPE needs a square token grid")
    return dict(vocab_size=tok.codebook_size, block_size=h * w, num_classes=num_classes,
                class_dropout_prob=class_dropout, token_dropout_p=dropout, resid_dropout_p=dropout,
                ffn_dropout_p=dropout)


FAMILY = Family(
    name="llamagen",
    generator_class=LlamaGen,
    tokenizer_kind="discrete",
    description="LlamaGen GPT + VQ",
    load_official=official_loader(load_gpt, load_vq),
    random_weights=random_on_vq(LlamaGen),
    convert_args=CONVERT_ARGS,
    convert=convert,
    train_presets=TRAIN_PRESETS,
    size_args=(("dim",), ("n_layer",), ("n_head",)),
    derived=frozenset({"vocab_size", "block_size", "num_classes", "class_dropout_prob", "token_dropout_p",
                       "resid_dropout_p", "ffn_dropout_p"}),
    derive_config=derive_config,
    bind=lambda generator, tok: generator.bind_tokenizer(tok),
)
