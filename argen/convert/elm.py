"""Released ELM checkpoints -> argen modules.

The BAE files (``bae/bae_{16,16_deter,20,24}/binaryae_ema.th``) are the state dict of the official
training wrapper: the autoencoder's weights under ``ae.`` next to the discriminator's and LPIPS's,
which are dropped (as the official ``load_pretrain`` does). argen's
:class:`~argen.tokenizers.binary.BinaryAutoEncoder` has the official key names, so the rest is a
strict load.

The LMs (``gpt/{L,XL,XXL,2B}-<token_each>-<code_dim>.pth``) are flat state dicts with
:class:`~argen.generators.elm.ELM`'s key names; their size, split and depth are read off the file
(:func:`elm_shape`), so ``load_elm(path)`` needs no arguments, and given ones are checked against it.

    bae = load_bae("bae_16/binaryae_ema.th", token_each=2)   # 16 bits read as 2 x 8-bit sub-tokens
    lm = load_elm("gpt/L-2-8.pth")                            # ELM-L, 2 sub-tokens of 8 bits
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from argen.convert.checkpoint import Checkpoint, build_loaded, read_state_dict, select_weights, source_name, unwrap
from argen.errors import CheckpointError, ConfigError
from argen.generators.elm import ELM, ELMConfig
from argen.generators.elm import PRESETS as ELM_PRESETS
from argen.modeling import build_config
from argen.tokenizers.binary import BinaryAEConfig, BinaryAutoEncoder

AE_PREFIX = "ae."
_EMBED = "quantize.embed.weight"
_FIRST = "generator.blocks.0.weight"  # a GroupNorm (1-D) with norm_first, the first conv (4-D) without


def bae_state_dict(obj: Any, *, source: str = "") -> dict[str, torch.Tensor]:
    """The autoencoder's weights in an official BAE file: the ``ae.*`` entries with that prefix
    stripped, or, where the file has none, the file as it is (an already stripped state dict)."""
    state = unwrap(obj, source=source)
    ae = {k[len(AE_PREFIX):]: v for k, v in state.items() if k.startswith(AE_PREFIX)}
    return ae or state


def _norm_first_hint(state: Mapping[str, torch.Tensor], norm_first: bool) -> str:
    """Why a strict load failed when the file's ``norm_first`` differs from the one asked for."""
    first = state.get(_FIRST)
    if first is None or (first.dim() == 1) == norm_first:
        return ""
    saved = first.dim() == 1
    return (f"; this checkpoint was saved with norm_first={saved} (generator.blocks.0 is "
            f"{'a GroupNorm' if saved else 'the first conv'}; norm_first shifts every generator.blocks index by "
            f"one): load it with norm_first={saved}")


def load_bae(
    checkpoint: Checkpoint,
    *,
    bits: int | None = None,
    token_each: int = 1,
    norm_first: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **config_overrides: Any,
) -> BinaryAutoEncoder:
    """An official ``binaryae_ema.th`` (or its state dict) -> :class:`BinaryAutoEncoder`, strictly, in
    eval mode. ``bits`` (K) defaults to the rows of ``quantize.embed.weight``; ``config_overrides`` are
    other :class:`BinaryAEConfig` fields (defaults: the released hyper-parameters)."""
    source = source_name(checkpoint)
    state = bae_state_dict(read_state_dict(checkpoint), source=source)
    if bits is None:
        if _EMBED not in state:
            raise CheckpointError(f"{source} is not an ELM BAE checkpoint: no {_EMBED!r} (nor 'ae.{_EMBED}') "
                                  "to read the number of bits from; pass bits=")
        bits = int(state[_EMBED].shape[0])
    config = build_config(BinaryAEConfig, {}, None,
                          {**config_overrides, "codebook_size": bits, "token_each": token_each,
                           "norm_first": norm_first}, "ELM BAE")
    try:
        return build_loaded(BinaryAutoEncoder, config, state, source=source, device=device, dtype=dtype)
    except CheckpointError as exc:
        hint = _norm_first_hint(state, norm_first)
        if not hint:
            raise
        raise CheckpointError(f"{exc}{hint}") from None


def parse_release(name: str) -> dict[str, Any]:
    """A release name ``<size>-<token_each>-<code_dim>`` ("L-2-12", "XXL-1-16", "2B-2-12") -> config arguments."""
    parts = name.upper().removeprefix("ELM-").split("-")
    if len(parts) != 3 or parts[0] not in ELM_PRESETS or not parts[1].isdigit() or not parts[2].isdigit():
        raise ConfigError(f"an ELM release is named <size>-<token_each>-<code_dim> with size in "
                          f"{', '.join(ELM_PRESETS)} (e.g. L-2-12), got {name!r}")
    return {"preset": parts[0], "token_each": int(parts[1]), "code_dim": int(parts[2])}


def elm_shape(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What an ELM state dict's shapes say: dim, depth, heads (from the released sizes' head width),
    token_each, code_dim and the number of classes."""
    split = "tok_embedder.0.weight" in state
    emb = state.get("tok_embedder.0.weight" if split else "tok_embedder.weight")
    if emb is None or "cls_embedding.embedding_table.weight" not in state:
        raise CheckpointError("not an ELM LM state dict: no tok_embedder / cls_embedding weights "
                              f"(keys start: {', '.join(list(state)[:4])})")
    rows, dim = emb.shape
    code_dim = int(rows).bit_length() - 1
    if 2**code_dim != rows:
        raise CheckpointError(f"an ELM sub-vocabulary has 2 ** code_dim rows, this one {rows}")
    token_each = sum(1 for k in state if k.startswith("tok_embedder.")) if split else 1
    n_layer = len({k.split(".")[1] for k in state if k.startswith("layers.")})
    heads = {p["dim"]: p["n_head"] for p in ELM_PRESETS.values()}
    shape = {"dim": int(dim), "n_layer": n_layer, "token_each": token_each, "code_dim": code_dim,
             "num_classes": int(state["cls_embedding.embedding_table.weight"].shape[0]) - 1}
    if dim in heads:
        shape["n_head"] = heads[dim]
    return shape


def load_elm(
    checkpoint: Checkpoint,
    release: str | None = None,
    *,
    weights: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **model_args: Any,
) -> ELM:
    """An official ELM LM (``gpt/L-2-12.pth``, or its state dict) -> :class:`ELM`, strictly, in eval mode.
    The architecture is read off the file; ``release`` ("L-2-12") and ``model_args`` (official
    ``ModelArgs`` names) are checked against it, which names a file that is not the release asked for.
    ``weights``: a training checkpoint's "ema" or "raw" ``["model"]`` (the releases are flat)."""
    source = source_name(checkpoint)
    state = select_weights(read_state_dict(checkpoint), weights, auto="raw", ema_key="ema", source=source)
    state = {k: v for k, v in state.items() if k != "freqs_cis"}
    found = elm_shape(state)
    asked = {**(parse_release(release) if release else {}), **model_args}
    preset = asked.pop("preset", None)
    expected = {**(ELM_PRESETS[preset] if preset else {}), **asked}
    wrong = {k: (v, found[k]) for k, v in expected.items() if k in found and found[k] != v}
    if wrong:
        what = ", ".join(f"{k}={v} (the file has {f})" for k, (v, f) in wrong.items())
        raise CheckpointError(f"{source} is not the ELM asked for: {what}")
    if "n_head" not in found and "n_head" not in expected:
        raise ConfigError(f"{source}: dim {found['dim']} is none of the released sizes; pass n_head=")
    config = ELMConfig(**{**found, **expected})
    return build_loaded(ELM, config, state, source=source, device=device, dtype=dtype)
