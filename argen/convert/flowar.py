"""Official FlowAR checkpoints -> argen's :class:`~argen.generators.FlowAR`.

argen's key names are the official ones, so loading is a strict ``load_state_dict`` once the state dict
is found:

- the released ``FlowAR-{S,L,H}.pth`` (Hugging Face ``OliverRen/FlowAR``) are **flat** state dicts,
  which the official eval.py loads strictly; they hold the buffers ``mask`` and ``*.rope.freqs``;
- training checkpoints (``checkpoint-last.pth`` of main_flowar.py) wrap them:
  {"model", "model_ema", "optimizer", "epoch", "scaler", "args"}.

    model = load_flowar("FlowAR-S.pth", "flowar_small")
    model = load_flowar("checkpoint-last.pth", "flowar_large", ema=True)   # the EMA weights
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from argen.convert.checkpoint import load_into, read_state_dict, unwrap
from argen.convert.llamagen import Checkpoint
from argen.errors import ConfigError
from argen.generators.flowar import PRESETS, FlowAR, FlowARConfig


def flowar_state(raw: Any, ema: bool | None, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside an official FlowAR file. ``ema`` None: a flat file as is, a training
    checkpoint's live ``["model"]`` (what main_flowar.py evaluates); True / False: ``["model_ema"]`` /
    ``["model"]`` of a training checkpoint (True on a flat file is an error)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source} does not hold a FlowAR state dict (got {type(raw).__name__})")
    wrapped = "model" in raw or "model_ema" in raw
    if ema and not wrapped:
        raise ConfigError(f"{source} is a flat state dict (the release format, one set of weights): it has no "
                          "'model_ema'; pass ema=None (or False) to load it")
    if ema and "model_ema" not in raw:
        raise ConfigError(f"{source} has no EMA weights ('model_ema'); pass ema=False to load the raw 'model' weights")
    key = "model_ema" if ema else "model"
    if wrapped and key not in raw:
        raise ConfigError(f"{source} has no {key!r} entry (it holds {', '.join(map(str, raw))}); "
                          f"pass ema={not ema} to load the other weights")
    return unwrap(raw, (key, "state_dict", "module"), source=source)


def load_flowar(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    ema: bool | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **flowar_args: Any,
) -> FlowAR:
    """Load an official FlowAR (preset "flowar_small", "flowar_large", "flowar_huge", or the official
    ``FlowAR`` constructor arguments as overrides). Strict: missing or unexpected keys and wrong shapes
    are a CheckpointError naming them. Eval mode."""
    if preset is None and "encoder_embed_dim" not in flowar_args:
        raise ConfigError(f"load_flowar needs a preset ({', '.join(PRESETS)}) or the FlowAR arguments "
                          "(encoder_embed_dim, ...)")
    cfg = FlowARConfig.preset(preset, **flowar_args)
    source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "state dict"
    state = flowar_state(read_state_dict(checkpoint), ema, source)
    model = FlowAR.from_config(cfg, device="meta")
    load_into(model, state, source=source)
    return model.to(device=device, dtype=dtype).eval()
