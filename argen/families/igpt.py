"""The image-GPT family: pixel-wise autoregression over a colour palette's ids (the model in
:mod:`argen.generators.igpt`, its released weights in :mod:`argen.convert.igpt`); ``--kind pixel``
trains one on a palette fitted with ``argen train tokenizer --kind palette``."""
from __future__ import annotations

import argparse
from typing import Any

import torch

from argen.convert.igpt import igpt_config, load_igpt, load_igpt_palette
from argen.errors import ConfigError
from argen.families.registry import Family, arg
from argen.generators.igpt import ImageGPT
from argen.tokenizers.palette import PaletteTokenizer

# the model card's sampling (openai/imagegpt-*): top-k 40 at temperature 1, unconditional
IGPT_DEFAULTS = {"cfg_scale": 1.0, "top_k": 40, "top_p": 1.0, "temperature": 1.0}

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_embd=64, n_layer=2, n_head=4),
    "small": dict(n_embd=128, n_layer=4, n_head=4),
}


def load_official(paths: dict[str, Any], generator_args: dict[str, Any], tokenizer_args: dict[str, Any],
                  device, dtype) -> tuple[ImageGPT, PaletteTokenizer]:
    gen = load_igpt(paths["generator"], paths.get("config"), device=device, dtype=dtype, **generator_args)
    return gen, load_igpt_palette(paths["tokenizer"], device=device)


def random_weights(generator_args: dict[str, Any], tokenizer_args: dict[str, Any]) -> tuple[ImageGPT, PaletteTokenizer]:
    """The released architecture with GPT-2's initialisation, and a palette of random colours."""
    gen = ImageGPT(igpt_config(None, **generator_args))
    gen.init_weights()
    tok = PaletteTokenizer.from_colours(torch.rand(gen.vocab_size, 3) * 2 - 1)
    return gen.bind_tokenizer(tok), tok


CONVERT_ARGS = (
    arg("--model-dir", required=True,
        help="folder of a transformers-format release (config.json + model.safetensors or pytorch_model.bin), "
             "e.g. a download of openai/imagegpt-small"),
    arg("--palette", help="the palette: preprocessor_config.json (default: the one in --model-dir), or a .npy / JSON "
                          "list of (K, 3) colours in [-1, 1]"),
    arg("--top-k", type=int, default=40, help="default top-k written to the model (the model card's 40)"),
)


def convert(args: argparse.Namespace) -> tuple[ImageGPT, PaletteTokenizer, dict[str, Any]]:
    if args.weights == "ema":
        raise ConfigError("image-GPT releases hold one set of weights: --weights ema does not apply")
    gen = load_igpt(args.model_dir)
    palette = args.palette or f"{args.model_dir}/preprocessor_config.json"
    return gen, load_igpt_palette(palette), {**IGPT_DEFAULTS, "top_k": args.top_k}


def derive_config(tok: PaletteTokenizer, *, resolution: int, num_classes: int, class_dropout: float,
                  dropout: float) -> dict[str, Any]:
    h, w = tok.latent_grid(resolution)
    if h != w:
        raise ConfigError("image-GPT models square images")
    return dict(vocab_size=tok.codebook_size + 1, n_positions=h * w, num_classes=num_classes,
                class_dropout_prob=class_dropout if num_classes else 0.0, resid_pdrop=dropout, embd_pdrop=dropout,
                attn_pdrop=dropout)


FAMILY = Family(
    name="igpt",
    aliases=("pixel",),
    generator_class=ImageGPT,
    tokenizer_kind="pixels",
    description="image-GPT: pixel-wise GPT over a colour palette (transformers-format releases)",
    load_official=load_official,
    random_weights=random_weights,
    convert_args=CONVERT_ARGS,
    convert=convert,
    train_presets=TRAIN_PRESETS,
    size_args=(("n_embd",), ("n_layer",), ("n_head",)),
    derived=frozenset({"vocab_size", "n_positions", "num_classes", "class_dropout_prob", "resid_pdrop",
                       "embd_pdrop", "attn_pdrop"}),
    derive_config=derive_config,
    bind=lambda generator, tok: generator.bind_tokenizer(tok),
)
