"""Released ELM checkpoints -> argen modules.

The BAE files (``bae/bae_{16,16_deter,20,24}/binaryae_ema.th``) are the state dict of the official
training wrapper: the autoencoder's weights under ``ae.`` next to the discriminator's and LPIPS's,
which are dropped (as the official ``load_pretrain`` does). argen's
:class:`~argen.tokenizers.binary.BinaryAutoEncoder` has the official key names, so the rest is a
strict load.

    bae = load_bae("bae_16/binaryae_ema.th", token_each=2)   # 16 bits read as 2 x 8-bit sub-tokens
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from argen.convert.checkpoint import Checkpoint, build_loaded, read_state_dict, source_name, unwrap
from argen.errors import CheckpointError
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
