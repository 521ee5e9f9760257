"""Official LlamaGen Distilled Decoding students (``LlamaGen-DD/llamagen-{B,L}.pt``) -> argen ``DDLlamaGen``.

The official key names are argen's. The released sampler loads ``checkpoint["ema"]`` (every README command
passes ``--ema``), else ``["model"]`` / ``["module"]`` / ``["state_dict"]`` / the file itself. The codebook
is not in the checkpoint: the official scripts pass the l2-normalised VQ codebook to the constructor, here
the teacher's VQ tokenizer (or its embedding weights) comes in as ``tokenizer``.

    vq = load_vq("vq_ds16_c2i.pt", "VQ-16")
    student = load_dd_llamagen("llamagen-B.pt", "dd-llamagen-b", tokenizer=vq)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from argen.convert.checkpoint import Checkpoint, build_loaded, read_state_dict, select_weights, source_name
from argen.convert.llamagen import _IGNORED
from argen.errors import ConfigError
from argen.generators.dd_llamagen import PRESETS, DDLlamaGen, DDLlamaGenConfig


def dd_llamagen_config(preset: str | None = None, **model_args: Any) -> DDLlamaGenConfig:
    """DDLlamaGenConfig from a preset ("dd-llamagen-b", "dd-llamagen-l") and/or official ``ModelArgs`` keywords."""
    return DDLlamaGenConfig.preset(preset, **model_args)


def load_dd_llamagen(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    tokenizer: Any = None,
    weights: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **model_args: Any,
) -> DDLlamaGen:
    """Load an official LlamaGen DD checkpoint (path or state dict) into an argen ``DDLlamaGen``.

    ``preset`` is "dd-llamagen-b" / "dd-llamagen-l"; ``model_args`` are the official ``ModelArgs`` names
    (dim, n_layer, n_head, vocab_size, block_size, num_classes, codebook_dim, ...) plus the sampling
    defaults ``two_step_t`` / ``split_t``. ``weights``: "auto" takes ``["ema"]`` where the file has it (what
    the README commands load) and the live weights otherwise; "ema" / "raw" force one. ``tokenizer``: the
    teacher's VQ tokenizer, or its (V, C) codebook weights; without it the model has no codebook until
    ``bind_tokenizer``. Strict key and shape checks; eval mode.
    """
    if preset is None and "dim" not in model_args:
        raise ConfigError(f"load_dd_llamagen needs a preset ({', '.join(PRESETS)}) "
                          "or the model arguments (dim, n_layer, n_head, ...)")
    cfg = dd_llamagen_config(preset, **model_args)
    source = source_name(checkpoint)
    obj = read_state_dict(checkpoint)
    has_ema = isinstance(obj, Mapping) and isinstance(obj.get("ema"), Mapping)
    state = select_weights(obj, weights, auto="ema" if has_ema else "raw", ema_key="ema", source=source)
    state = {k: v for k, v in state.items() if not _IGNORED.match(k)}
    model = build_loaded(DDLlamaGen, cfg, state, source=source, device=device, dtype=dtype)
    if tokenizer is not None:
        model.bind_tokenizer(tokenizer)
    return model
