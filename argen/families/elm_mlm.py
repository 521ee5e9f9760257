"""The ELM masked-LM family: ELM's bidirectional LM over a binary autoencoder's bits, decoded MaskGIT-style
by the ``mask`` sampler (the model in :mod:`argen.generators.elm_mlm`, its released files in
:mod:`argen.convert.elm_mlm`, the BAE and the bit targets shared with the AR family, :mod:`argen.families.elm`);
``--kind elm-mlm`` trains one on a BAE from ``argen train tokenizer --kind binary``.

The released ``gpt/mlm{L,XL,XXL}-1-16.pth`` have never been loaded here: the README's file sizes (1.51 / 3.27 /
5.86 GB) are those of the published class without its unused ``pos_embed`` / ``output`` weights, so the zoo and
``argen convert elm-mlm`` build the lean model (``keep_unused=False``: every weight that computes loads strictly,
the unused ones are ignored where a file has them).
"""
from __future__ import annotations

import argparse
import re
from typing import Any

import torch
import torch.nn.functional as F

from argen.convert.checkpoint import read_state_dict, select_weights, source_name
from argen.convert.elm import load_bae
from argen.convert.elm_mlm import load_elm_mlm
from argen.errors import CheckpointError, ConfigError
from argen.families.elm import DERIVED, PAIR_ARGS, bit_codes, derive_config, paired_with_bae, random_bae
from argen.families.registry import Family, arg, model_loss, official_values
from argen.generators.elm_mlm import PRESETS, ElmMLM, ElmMLMConfig
from argen.samplers.logits import CFG_SCHEDULES
from argen.tokenizers.binary import BinaryAutoEncoder

# The MLM's sampling. From the official code: 10 passes (generate_cfg's num_iter and sample_fid.py's
# --gen_iter_num default), samples from the plain guided distribution (temperature 1, no top-k / top-p: the
# loop ignores both). Not in the official repository's tree but in mlmL-1-16 sampling scripts found beside it
# (which also pass --gen_iter_num 256), matching the paper (a rising CFG, a high Gumbel temperature): cfg 3.0 on
# the linear ramp and --temperature 9.0, which scales only the confidence noise (the mask sampler's
# choice_temperature). The official argparse defaults (cfg 10, constant, temperature 1) are not what those run.
ELM_MLM_SAMPLING = {"cfg_scale": 3.0, "cfg_schedule": "linear", "num_iter": 10, "temperature": 1.0, "top_k": 0,
                    "top_p": 1.0, "choice_temperature": 9.0}

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=64, n_layer=2, n_head=4, multiple_of=32, keep_unused=False),
    "small": dict(dim=256, n_layer=6, n_head=8, multiple_of=64, keep_unused=False),
}


def check_bae(generator: ElmMLM, tok: Any) -> None:
    """The binary autoencoder's bits and split must be the ones the MLM reads (token_each x code_dim)."""
    c = generator.config
    bits = getattr(tok, "bits", None)
    if bits is None:
        raise ConfigError(f"an ELM MLM reads a binary autoencoder's bits; got a {type(tok).__name__}")
    if (bits, tok.token_each) != (c.token_each * c.code_dim, c.token_each):
        raise ConfigError(f"the binary autoencoder reads {bits} bits as {tok.token_each} sub-token(s) of "
                          f"{bits // max(tok.token_each, 1)}, this MLM reads {c.token_each} of {c.code_dim} bits: pair "
                          f"it with a {c.token_each * c.code_dim}-bit BAE split {c.token_each} ways")


def random_weights(generator_args: dict[str, Any], tokenizer_args: dict[str, Any]) -> tuple[ElmMLM, BinaryAutoEncoder]:
    """The release's architecture with the official init (N(0, 0.02); the mlm_layer head reads the random word
    embeddings, so the logits are not flat), and a randomly initialised BAE of the released shape and bits."""
    args = dict(generator_args)
    gen = ElmMLM(ElmMLMConfig.preset(args.pop("preset", None), **args))
    gen.init_weights()
    return gen, random_bae(gen.config, tokenizer_args)


_LAYER = re.compile(r"^layers\.(\d+)\.")


def file_architecture(state: dict[str, torch.Tensor], source: str) -> dict[str, int]:
    """What an MLM state dict tells of its architecture: dim, n_layer and code_dim (the word table has
    2^code_dim + 1 rows), num_classes (the class table's rows but the null class) and, where the file keeps the
    unused ``pos_embed``, block_size. Not n_head, nor token_each (every sub-token shares the one table)."""
    table = state.get("tok_embedder.weight")
    if table is None or table.dim() != 2:
        raise CheckpointError(f"{source} is not an ELM MLM checkpoint: no 'tok_embedder.weight' table")
    rows, dim = table.shape
    code_dim = max(int(rows - 1).bit_length() - 1, 0)
    if 2**code_dim + 1 != rows:
        raise CheckpointError(f"{source}: tok_embedder.weight has {rows} rows, not 2^code_dim + 1 (the mask token)")
    layers = {int(m.group(1)) for k in state if (m := _LAYER.match(k))}
    found = dict(dim=int(dim), n_layer=max(layers) + 1 if layers else 0, code_dim=code_dim)
    classes = state.get("cls_embedding.embedding_table.weight")
    if classes is not None:
        found["num_classes"] = int(classes.shape[0]) - 1
    if "pos_embed.weight" in state:
        found["block_size"] = int(state["pos_embed.weight"].shape[0])
    return found


def release_preset(found: dict[str, int]) -> str | None:
    """The released size (L / XL / XXL) with the file's dim, n_layer and code_dim, if any."""
    for name, p in PRESETS.items():
        if all(p[k] == found[k] for k in ("dim", "n_layer", "code_dim")):
            return name
    return None


CONVERT_ARGS = (
    arg("--gpt-ckpt", required=True, help="the MLM, e.g. gpt/mlmL-1-16.pth of xuantonglll/ELM"),
    arg("--bae-ckpt", required=True, help="its binary autoencoder, e.g. bae/bae_16/binaryae_ema.th "
                                          "(bits = token_each x code_dim)"),
    arg("--preset", choices=list(PRESETS), help="the released size; default: read off the file (dim, layers, "
                                                "code_dim), or give custom sizes with --gpt-arg / --gpt-config"),
    arg("--keep-unused", action="store_true", help="build and load strictly the published class's unused "
                                                    "pos_embed / proj / output weights too (default: ignored)"),
    *PAIR_ARGS,
    arg("--cfg", type=float, default=ELM_MLM_SAMPLING["cfg_scale"], help="default guidance written to the model"),
    arg("--cfg-schedule", default=ELM_MLM_SAMPLING["cfg_schedule"], choices=[s for s in CFG_SCHEDULES if s != "var"],
        help="default guidance ramp over the passes"),
    arg("--num-iter", type=int, default=ELM_MLM_SAMPLING["num_iter"], help="default passes of the mask sampler "
                                                                             "(official --gen_iter_num: 10)"),
    arg("--choice-temperature", type=float, default=ELM_MLM_SAMPLING["choice_temperature"],
        help="default scale of the confidence noise (the official --temperature of the MLM scripts)"),
)


def convert(args: argparse.Namespace) -> tuple[ElmMLM, BinaryAutoEncoder, dict[str, Any]]:
    """The MLM (a released size read off the file, or custom sizes: the file's, then --gpt-config / --gpt-arg;
    token_each by default the BAE's bits over the file's code_dim) and its BAE read with the MLM's split."""
    tok = load_bae(args.bae_ckpt, norm_first=not args.no_norm_first, **official_values(args, "bae"))
    given = official_values(args, "gpt")
    preset, sizes = args.preset, {}
    if preset is None and "dim" not in given:
        source = source_name(args.gpt_ckpt)
        state = select_weights(read_state_dict(args.gpt_ckpt), args.weights, auto="raw", ema_key="ema", source=source)
        found = file_architecture(state, source)
        preset = release_preset(found)
        if preset is None:
            if "n_head" not in given:
                raise ConfigError(f"{source}: dim {found['dim']}, {found['n_layer']} layers, code_dim "
                                  f"{found['code_dim']} is none of the released sizes ({', '.join(PRESETS)}); pass "
                                  "--gpt-arg n_head=... (and block_size / multiple_of where they are not 256)")
            sizes = {**found, "token_each": max(tok.bits // found["code_dim"], 1)}
    gen = load_elm_mlm(args.gpt_ckpt, preset, keep_unused=args.keep_unused, weights=args.weights,
                       **{**sizes, **given})
    if tok.token_each != gen.config.token_each:
        tok = tok.with_token_each(gen.config.token_each)
    check_bae(gen, tok)
    return gen, tok, {**ELM_MLM_SAMPLING, "cfg_scale": args.cfg, "cfg_schedule": args.cfg_schedule,
                      "num_iter": args.num_iter, "choice_temperature": args.choice_temperature}


def sample_defaults(cfg_scale: float, top_k: int, latent_grid: tuple[int, int]) -> dict[str, Any]:
    """A model trained here: the MLM's guidance ramp and passes (at most one per position), the sampler's own
    confidence noise (choice_temperature = temperature)."""
    n = latent_grid[0] * latent_grid[1]
    return {"cfg_scale": cfg_scale, "cfg_schedule": "linear", "num_iter": min(ELM_MLM_SAMPLING["num_iter"], n),
            "temperature": 1.0, "top_k": top_k, "top_p": 1.0}


def masked_preview(pipe: Any, codes: torch.Tensor) -> torch.Tensor:
    """The mask sampler's codes so far (B, N, G), decoded, with the positions still reading 0 (the sampler
    reports unknown positions as 0; a position fixed to the all-zero code reads the same) greyed out."""
    h, w = pipe.generator.token_grid
    images = pipe.decode(codes.clamp(min=0))
    known = (codes > 0).flatten(2).any(-1).view(-1, 1, h, w).to(images.dtype)
    return images * F.interpolate(known, size=images.shape[-2:], mode="nearest")  # 0 is mid-grey


FAMILY = Family(
    name="elm-mlm",
    generator_class=ElmMLM,
    tokenizer_kind="bits",
    description="ELM masked LM: bidirectional LM over a binary autoencoder's bits, MaskGIT-style decoding "
                "(xuantonglll/ELM mlm*-1-16)",
    load_official=paired_with_bae(load_elm_mlm),
    random_weights=random_weights,
    convert_args=CONVERT_ARGS,
    convert=convert,
    train_presets=TRAIN_PRESETS,
    size_args=(("dim",), ("n_layer",), ("n_head",)),
    derived=DERIVED,
    derive_config=derive_config,  # the AR family's: the BAE's split, the square grid, classes and dropouts
    train_targets=bit_codes,
    train_loss=model_loss,
    sample_defaults=sample_defaults,
    bind=check_bae,
    preview=masked_preview,
)
