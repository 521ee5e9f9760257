"""Official LlamaGen checkpoints -> argen modules.

The official key names are argen's key names (the modules mirror the official ones), so conversion is
unwrapping (DDP ``["model"]`` / deepspeed ``["module"]`` / ``["state_dict"]`` / flat FSDP files),
dropping non-weight entries the official loader tolerates (``freqs_cis``, KV-cache buffers) and a
strict load with clear messages.

    gpt = load_gpt("c2i_B_256.pt", "GPT-B", block_size=256)
    vq = load_vq("vq_ds16_c2i.pt", "VQ-16")
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import torch

from argen.convert.checkpoint import load_into, read_state_dict, unwrap
from argen.errors import ConfigError
from argen.generators.llamagen import PRESETS as GPT_PRESETS
from argen.generators.llamagen import LlamaGen, LlamaGenConfig
from argen.tokenizers.vq import VQConfig, VQTokenizer

Checkpoint = str | os.PathLike | Mapping[str, Any]

# entries the official sampler's strict=False load tolerates but that are not weights
_IGNORED = re.compile(r"^(freqs_cis|layers\.\d+\.attention\.kv_cache\.(k|v)_cache|causal_mask)$")


def gpt_config(preset: str | None = None, **model_args: Any) -> LlamaGenConfig:
    """LlamaGenConfig from a preset name ("GPT-B", ...) and/or official ``ModelArgs`` keywords."""
    return LlamaGenConfig.preset(preset, **model_args)


def vq_config(preset: str | None = None, **vq_args: Any) -> VQConfig:
    """VQConfig from a preset name ("VQ-16", "VQ-8") and/or official VQ ``ModelArgs`` keywords."""
    return VQConfig.preset(preset, **vq_args)


def _weights(checkpoint: Checkpoint, prefer_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "state dict"
    raw = read_state_dict(checkpoint)
    keys = ("ema", "model", "module", "state_dict") if prefer_ema else ("model", "module", "state_dict")
    state = unwrap(raw, keys, source=source)
    return {k: v for k, v in state.items() if not _IGNORED.match(k)}, source


def _build(cls: type, cfg: Any, checkpoint: Checkpoint, ema: bool, device, dtype):
    """Build ``cls`` on the meta device and load the official weights strictly; eval mode."""
    state, source = _weights(checkpoint, ema)
    model = cls.from_config(cfg, device="meta")
    load_into(model, state, source=source)
    return model.to(device=device, dtype=dtype).eval()


def load_gpt(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    ema: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **model_args: Any,
) -> LlamaGen:
    """Load an official LlamaGen GPT checkpoint (path or state dict) into an argen ``LlamaGen``.

    ``preset`` is "GPT-B" / "GPT-L" / "GPT-XL" / "GPT-XXL" / "GPT-3B"; ``model_args`` are the official
    ``ModelArgs`` names (dim, n_layer, n_head, vocab_size, block_size, num_classes, ...). Set
    ``block_size=576`` for the 384px checkpoints. ``ema=True`` takes ``["ema"]`` when present.
    Returns the model in eval mode; keys and shapes are checked strictly.
    """
    if preset is None and "dim" not in model_args:
        raise ConfigError(f"load_gpt needs a preset ({', '.join(GPT_PRESETS)}) or the model arguments (dim, n_layer, n_head, ...)")
    return _build(LlamaGen, gpt_config(preset, **model_args), checkpoint, ema, device, dtype)


def load_vq(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    ema: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **vq_args: Any,
) -> VQTokenizer:
    """Load an official LlamaGen VQ checkpoint into an argen ``VQTokenizer`` ("VQ-16" or "VQ-8", or
    the official VQ argument names plus ``ch`` and ``num_res_blocks``). Strict, eval mode."""
    cfg = vq_config(preset or ("VQ-16" if not vq_args else None), **vq_args)
    return _build(VQTokenizer, cfg, checkpoint, ema, device, dtype)
