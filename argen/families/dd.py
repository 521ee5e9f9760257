"""The Distilled Decoding families: students of LlamaGen and VAR that map noise to a whole sequence in one
or two passes (the models in :mod:`argen.generators.dd_llamagen` / :mod:`argen.generators.dd_var`, the
released checkpoints in :mod:`argen.convert.dd_llamagen` / :mod:`argen.convert.dd_var`, the sampler in
:mod:`argen.samplers.dd`). Each student reads its teacher's tokenizer: its noise lives in that tokenizer's
code space, and the tokenizer decodes the student's continuous tokens as they are."""
from __future__ import annotations

import argparse
from dataclasses import asdict, fields
from typing import Any

import torch
from torch import nn

from argen.convert.dd_llamagen import load_dd_llamagen
from argen.convert.dd_var import load_dd_var
from argen.convert.llamagen import load_vq
from argen.convert.var import load_var_vae
from argen.errors import ConfigError
from argen.families.llamagen import random_on_vq
from argen.families.registry import Family, arg, official_args, official_values
from argen.families.var import random_on_msvq
from argen.generators.dd_llamagen import DDLlamaGen, DDLlamaGenConfig
from argen.generators.dd_var import DDVAR, DDVARConfig, decode_scale_tokens
from argen.generators.distilled import init_from_teacher
from argen.generators.llamagen import LlamaGen
from argen.generators.var import VAR
from argen.tokenizers.msvq import MultiScaleVQVAE
from argen.tokenizers.vq import VQTokenizer


def bind(generator: Any, tok: Any) -> None:
    """The student takes its codebook from the tokenizer (ConfigError when the codebook does not fit)."""
    generator.bind_tokenizer(tok)


def decoded_preview(pipe: Any, codes: torch.Tensor) -> torch.Tensor:
    """The sequence after each step, decoded (a step is a whole image)."""
    return pipe.decode(codes)


def student_config(config_class: type, teacher: Any, **extra: Any) -> Any:
    """The student's config: the teacher's dimensions (every field the two share), then ``extra``."""
    names = {f.name for f in fields(config_class)}
    return config_class(**{k: v for k, v in {**asdict(teacher.config), **extra}.items() if k in names})


def restart_point(two_step_t: int | None, default: int, positions: int, unit: str) -> int:
    """A 2-step run's restart point: ``two_step_t`` or the default, inside 1 .. positions - 1."""
    t2 = default if two_step_t is None else two_step_t
    if not 0 < t2 < positions:
        raise ConfigError(f"--two-step-t must lie in 1..{positions - 1} ({unit}), got {t2}")
    return t2


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


def fit_code_embedding(codes: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Least squares W, b with W c_i + b ~ table[i] -> (W (dim, C), b (dim,), R^2 of the fit)."""
    a = torch.cat([codes, torch.ones(len(codes), 1)], dim=1).double()
    sol = torch.linalg.lstsq(a, table.double()).solution  # (C + 1, dim)
    resid = (a @ sol - table.double()).square().sum()
    r2 = 1.0 - float(resid / (table.double() - table.double().mean(0)).square().sum().clamp_min(1e-30))
    return sol[:-1].T.float().contiguous(), sol[-1].float().contiguous(), round(r2, 6)


def llamagen_student(teacher: LlamaGen, *, two_step_t: int | None = None,
                     split: int | None = None) -> tuple[DDLlamaGen, dict[str, float]]:
    """The LlamaGen-DD student of ``teacher`` (same dims, no dropout), initialised from it -> (student, report).
    Default restart point: 80/256 of the tokens, as released. ``tok_embeddings`` becomes Linear(C -> dim),
    fitted by least squares to map each code vector to the teacher's embedding row of that code (the
    report's ``tok_embed_r2``); a teacher without a null class gets a zero null-class row."""
    n = teacher.config.block_size
    t2 = restart_point(two_step_t, max(1, min(n - 1, round(n * 80 / 256))), n, "tokens")
    student = DDLlamaGen(student_config(
        DDLlamaGenConfig, teacher, token_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0,
        drop_path_rate=0.0, class_dropout_prob=0.0, codebook_dim=int(teacher.code_vectors.shape[1]),
        two_step_t=t2, split_t=t2 if split is None else split))
    table = teacher.tok_embeddings.weight.detach().float().cpu()
    w, b, r2 = fit_code_embedding(teacher.code_vectors.detach().float().cpu(), table)
    derived = {"tok_embeddings.weight": w, "tok_embeddings.bias": b}
    key = "cls_embedding.embedding_table.weight"
    rows, have = student.state_dict()[key].shape[0], teacher.state_dict()[key]
    if have.shape[0] < rows:
        derived[key] = torch.cat([have.detach().float().cpu(), torch.zeros(rows - have.shape[0], have.shape[1])])
    init_from_teacher(student, teacher, derived)
    return student, {"tok_embed_r2": r2}


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
    distils="llamagen",
    from_teacher=llamagen_student,
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


def var_student(teacher: VAR, *, two_step_t: int | None = None,
                split: int | None = None) -> tuple[DDVAR, dict[str, float]]:
    """The VAR-DD student of ``teacher`` (same dims, no dropout), initialised from it -> (student, report).
    Default restart point: half of the scales. The position and level tables grow by the start scale:
    row 0 (the start token) and rows 1.. (token j at the teacher's slot that predicts token j) are the
    teacher's rows 0 and 0.. (the official ``init_with_teacher`` leaves row 1 random). The layer-wise noise
    embeddings are drawn small, not zero, so that their gradients are not zero once ``n_d_embed`` moves."""
    n = len(teacher.config.patch_nums)
    t2 = restart_point(two_step_t, max(1, n // 2), n, "scales")
    student = DDVAR(student_config(DDVARConfig, teacher, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                                   two_step_t=t2, loss_split_t=t2 if split is None else split))
    pos, lvl = teacher.pos_1LC.detach().float().cpu()[0], teacher.lvl_embed.weight.detach().float().cpu()
    init_from_teacher(student, teacher, {"pos_1LC": torch.cat([pos[:1], pos])[None],
                                         "lvl_embed.weight": torch.cat([lvl[:1], lvl])})
    with torch.no_grad():
        for layer in student.layerwise_n_d_embed:
            nn.init.normal_(layer.weight, std=0.02)
    return student, {}


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
    distils="var",
    from_teacher=var_student,
)
