"""The Distilled Decoding families: students of LlamaGen and VAR that map noise to a whole sequence in one
or two passes (the models in :mod:`argen.generators.dd_llamagen` / :mod:`argen.generators.dd_var`, the
released checkpoints in :mod:`argen.convert.dd_llamagen` / :mod:`argen.convert.dd_var`, the sampler in
:mod:`argen.samplers.dd`). Each student reads its teacher's tokenizer: its noise lives in that tokenizer's
code space, and the tokenizer decodes the student's continuous tokens as they are."""
from __future__ import annotations

import argparse
from typing import Any

import torch

from argen.convert.dd_llamagen import load_dd_llamagen
from argen.convert.dd_var import load_dd_var
from argen.convert.llamagen import load_vq
from argen.convert.var import load_var_vae
from argen.families.llamagen import random_on_vq
from argen.families.registry import Family, arg, official_args, official_values
from argen.families.var import random_on_msvq
from argen.generators.dd_llamagen import DDLlamaGen
from argen.generators.dd_var import DDVAR, decode_scale_tokens
from argen.tokenizers.msvq import MultiScaleVQVAE
from argen.tokenizers.vq import VQTokenizer


def bind(generator: Any, tok: Any) -> None:
    """The student takes its codebook from the tokenizer (ConfigError when the codebook does not fit)."""
    generator.bind_tokenizer(tok)


def decoded_preview(pipe: Any, codes: torch.Tensor) -> torch.Tensor:
    """The sequence after each step, decoded (a step is a whole image)."""
    return pipe.decode(codes)


# -- LlamaGen-DD -----------------------------------------------------------------------------------------
def load_llamagen_official(paths, generator_args, tokenizer_args, device, dtype) -> tuple[DDLlamaGen, VQTokenizer]:
    tok = load_vq(paths["tokenizer"], **tokenizer_args, device=device)
    return load_dd_llamagen(paths["generator"], **generator_args, tokenizer=tok, device=device, dtype=dtype), tok


def decode_token_vectors(generator: DDLlamaGen, tok: VQTokenizer, codes: torch.Tensor) -> torch.Tensor:
    """Continuous tokens (B, h*w, C) -> images through the VQ decoder, unquantised (as the official sampler)."""
    h, w = generator.token_grid
    return tok.decode_latents(codes.reshape(codes.shape[0], h, w, -1).permute(0, 3, 1, 2))


LLAMAGEN_ARGS = (
    arg("--dd-ckpt", required=True, help="LlamaGen-DD/llamagen-B.pt or llamagen-L.pt"),
    arg("--vq-ckpt", required=True, help="the teacher's VQ tokenizer, vq_ds16_c2i.pt"),
    arg("--dd-model", default="dd-llamagen-b", help="dd-llamagen-b or dd-llamagen-l"),
    arg("--vq-model", default="VQ-16"),
    *official_args("dd", "ModelArgs"),
    *official_args("vq", "VQ"),
)


def convert_llamagen(args: argparse.Namespace) -> tuple[DDLlamaGen, VQTokenizer, dict[str, Any]]:
    dd_args, vq_args = official_values(args, "dd"), official_values(args, "vq")
    tok = load_vq(args.vq_ckpt, args.vq_model if not vq_args else None, **vq_args)
    gen = load_dd_llamagen(args.dd_ckpt, None if dd_args.get("dim") else args.dd_model, tokenizer=tok,
                           weights=args.weights, **dd_args)
    return gen, tok, {}


DD_LLAMAGEN = Family(
    name="dd-llamagen",
    generator_class=DDLlamaGen,
    tokenizer_kind="discrete",
    description="Distilled Decoding student of LlamaGen (1-2 steps) + the teacher's VQ",
    load_official=load_llamagen_official,
    random_weights=random_on_vq(DDLlamaGen),
    convert_args=LLAMAGEN_ARGS,
    convert=convert_llamagen,
    bind=bind,
    decode=decode_token_vectors,
    preview=decoded_preview,
)


# -- VAR-DD ----------------------------------------------------------------------------------------------
def load_var_official(paths, generator_args, tokenizer_args, device, dtype) -> tuple[DDVAR, MultiScaleVQVAE]:
    vae = load_var_vae(paths["tokenizer"], **tokenizer_args, device=device)
    return load_dd_var(paths["generator"], **generator_args, vae=vae, device=device, dtype=dtype), vae


def decode_scales(generator: DDVAR, tok: MultiScaleVQVAE, codes: torch.Tensor) -> torch.Tensor:
    return decode_scale_tokens(tok, codes)


VAR_ARGS = (
    arg("--dd-ckpt", required=True, help="VAR-DD/var-d16.pth, var-d20.pth or var-d24.pth"),
    arg("--vae-ckpt", required=True, help="the teacher's VQ-VAE, vae_ch160v4096z32.pth"),
    arg("--dd-model", default="dd-var-d16", help="dd-var-d16, dd-var-d20 or dd-var-d24"),
    arg("--vae-model", default="vae_ch160v4096z32"),
    *official_args("dd", "DD_Model"),
    *official_args("vae", "VQVAE"),
)


def convert_var(args: argparse.Namespace) -> tuple[DDVAR, MultiScaleVQVAE, dict[str, Any]]:
    dd_args, vae_args = official_values(args, "dd"), official_values(args, "vae")
    vae = load_var_vae(args.vae_ckpt, None if vae_args else args.vae_model, **vae_args)
    gen = load_dd_var(args.dd_ckpt, None if dd_args.get("depth") else args.dd_model, vae=vae, weights=args.weights,
                      **dd_args)
    return gen, vae, {}


DD_VAR = Family(
    name="dd-var",
    generator_class=DDVAR,
    tokenizer_kind="multiscale",
    description="Distilled Decoding student of VAR (1-2 steps) + the teacher's multi-scale VQ-VAE",
    load_official=load_var_official,
    random_weights=random_on_msvq(DDVAR),
    convert_args=VAR_ARGS,
    convert=convert_var,
    bind=bind,
    decode=decode_scales,
    preview=decoded_preview,
)
