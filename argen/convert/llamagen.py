"""Official LlamaGen checkpoints -> argen modules.

The official key names are argen's key names (the modules mirror the official ones), so conversion is
unwrapping (DDP ``["model"]`` / deepspeed ``["module"]`` / ``["state_dict"]`` / flat FSDP files),
dropping non-weight entries the official loader tolerates (``freqs_cis``, KV-cache buffers) and a
strict load with clear messages.

    gpt = load_gpt("c2i_B_256.pt", "GPT-B", block_size=256)
    vq = load_vq("vq_ds16_c2i.pt", "VQ-16")
"""
from __future__ import annotations

import re
from typing import Any

import torch

from argen.convert.checkpoint import Checkpoint, build_loaded, read_state_dict, select_weights, source_name
from argen.errors import ConfigError
from argen.generators.llamagen import PRESETS as GPT_PRESETS
from argen.generators.llamagen import LlamaGen, LlamaGenConfig
from argen.tokenizers.vq import VQConfig, VQTokenizer

# entries the official sampler's strict=False load tolerates but that are not weights
_IGNORED = re.compile(r"^(freqs_cis|layers\.\d+\.attention\.kv_cache\.(k|v)_cache|causal_mask)$")


def gpt_config(preset: str | None = None, **model_args: Any) -> LlamaGenConfig:
    """LlamaGenConfig from a preset name ("GPT-B", ...) and/or official ``ModelArgs`` keywords."""
    return LlamaGenConfig.preset(preset, **model_args)


def vq_config(preset: str | None = None, **vq_args: Any) -> VQConfig:
    """VQConfig from a preset name ("VQ-16", "VQ-8") and/or official VQ ``ModelArgs`` keywords."""
    return VQConfig.preset(preset, **vq_args)


def _build(cls: type, cfg: Any, checkpoint: Checkpoint, weights: str, device, dtype):
    """Official LlamaGen weights ("auto" is the sampler's ``["model"]``; "ema" the training ``["ema"]``),
    without the non-weight entries, loaded strictly into ``cls``; eval mode."""
    source = source_name(checkpoint)
    state = select_weights(read_state_dict(checkpoint), weights, auto="raw", ema_key="ema", source=source)
    state = {k: v for k, v in state.items() if not _IGNORED.match(k)}
    return build_loaded(cls, cfg, state, source=source, device=device, dtype=dtype)


def load_gpt(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    weights: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **model_args: Any,
) -> LlamaGen:
    """Load an official LlamaGen GPT checkpoint (path or state dict) into an argen ``LlamaGen``.

    ``preset`` is "GPT-B" / "GPT-L" / "GPT-XL" / "GPT-XXL" / "GPT-3B"; ``model_args`` are the official
    ``ModelArgs`` names (dim, n_layer, n_head, vocab_size, block_size, num_classes, ...). Set
    ``block_size=576`` for the 384px checkpoints. ``weights``: "auto" / "raw" take ``["model"]`` (what the
    official sampler loads), "ema" the training checkpoint's ``["ema"]``.
    Returns the model in eval mode; keys and shapes are checked strictly.
    """
    if preset is None and "dim" not in model_args:
        raise ConfigError(f"load_gpt needs a preset ({', '.join(GPT_PRESETS)}) "
                          "or the model arguments (dim, n_layer, n_head, ...)")
    return _build(LlamaGen, gpt_config(preset, **model_args), checkpoint, weights, device, dtype)


def load_vq(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    weights: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **vq_args: Any,
) -> VQTokenizer:
    """Load an official LlamaGen VQ checkpoint into an argen ``VQTokenizer`` ("VQ-16" or "VQ-8", or
    the official VQ argument names plus ``ch`` and ``num_res_blocks``); ``weights`` as for :func:`load_gpt`.
    Strict, eval mode."""
    cfg = vq_config(preset or ("VQ-16" if not vq_args else None), **vq_args)
    return _build(VQTokenizer, cfg, checkpoint, weights, device, dtype)
