"""Official FlowAR checkpoints -> argen's :class:`~argen.generators.FlowAR`.

argen's key names are the official ones, so loading is a strict ``load_state_dict`` once the state dict
is found:

- the released ``FlowAR-{S,L,H}.pth`` (Hugging Face ``OliverRen/FlowAR``) are **flat** state dicts,
  which the official eval.py loads strictly; they hold the buffers ``mask`` and ``*.rope.freqs``;
- training checkpoints (``checkpoint-last.pth`` of main_flowar.py) wrap them:
  {"model", "model_ema", "optimizer", "epoch", "scaler", "args"}.

    model = load_flowar("FlowAR-S.pth", "flowar_small")
    model = load_flowar("checkpoint-last.pth", "flowar_large", weights="ema")   # the EMA weights
"""
from __future__ import annotations

from typing import Any

import torch

from argen.convert.checkpoint import Checkpoint, build_loaded, read_state_dict, select_weights, source_name
from argen.errors import ConfigError
from argen.generators.flowar import PRESETS, FlowAR, FlowARConfig


def load_flowar(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    weights: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **flowar_args: Any,
) -> FlowAR:
    """Load an official FlowAR (preset "flowar_small", "flowar_large", "flowar_huge", or the official
    ``FlowAR`` constructor arguments as overrides). Strict: missing or unexpected keys and wrong shapes
    are a CheckpointError naming them. Eval mode. ``weights``: "auto" takes a flat file as is and a training
    checkpoint's live ``["model"]`` (what main_flowar.py evaluates), "raw" the same, "ema" its ``["model_ema"]``."""
    if preset is None and "encoder_embed_dim" not in flowar_args:
        raise ConfigError(f"load_flowar needs a preset ({', '.join(PRESETS)}) or the FlowAR arguments "
                          "(encoder_embed_dim, ...)")
    cfg = FlowARConfig.preset(preset, **flowar_args)
    source = source_name(checkpoint)
    state = select_weights(read_state_dict(checkpoint), weights, auto="raw", ema_key="model_ema", source=source)
    return build_loaded(FlowAR, cfg, state, source=source, device=device, dtype=dtype)
