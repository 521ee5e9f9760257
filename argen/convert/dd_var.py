"""Official VAR-DD students (``microsoft/distilled_decoding``: ``VAR-DD/var-d16.pth`` ...) -> argen modules.

The key names are the official ones. The files are training checkpoints: the official sampler loads
``["trainer"]["ema_parameters"]`` (its ``--ema`` default) or ``["trainer"]["var_wo_ddp"]``; a flat state dict
loads as is. The student needs the teacher's VQ-VAE (``vae_ch160v4096z32.pth``, :func:`load_var_vae`).

    vae = load_var_vae("vae_ch160v4096z32.pth")
    dd = load_dd_var("var-d16.pth", "dd-var-d16", vae=vae)     # EMA weights, bound to the VQ-VAE, eval mode
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from argen.convert.checkpoint import RAW_KEYS, Checkpoint, build_loaded, read_state_dict, select_weights, source_name
from argen.convert.var import _from_vae
from argen.errors import ConfigError
from argen.generators.dd_var import DD_PRESETS, DDVAR, DDVARConfig
from argen.tokenizers.msvq import MultiScaleVQVAE


def _derived_buffers(cfg: DDVARConfig) -> dict[str, torch.Tensor]:
    """Placeholders of the state-dict buffers argen recomputes from the config (levels, mask, the zero k
    bias). The official loader (``strict=False``) tolerates their absence, which an EMA of the parameters
    alone would cause; the values are rebuilt after loading."""
    n = 1 + sum(p * p for p in cfg.patch_nums)
    out = {"lvl_1L": torch.zeros(1, n, dtype=torch.long), "attn_bias_for_masking": torch.zeros(1, 1, n, n)}
    out.update({f"blocks.{i}.attn.zero_k_bias": torch.zeros(cfg.embed_dim) for i in range(cfg.depth)})
    return out


def load_dd_var(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    vae: MultiScaleVQVAE,
    weights: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **config_overrides: Any,
) -> DDVAR:
    """Load an official VAR-DD student (preset "dd-var-d16" / "dd-var-d20" / "dd-var-d24", or the official
    ``DD_Model`` arguments plus ``two_step_t`` / ``loss_split_t``), bound to ``vae``, which fixes the vocabulary
    size, ``Cvae`` (and the scales unless given) as for :func:`argen.convert.var.load_var`. ``weights``:
    "auto" (= "ema", the official sampler's default; a flat file loads as is), "ema"
    (``["trainer"]["ema_parameters"]``) or "raw" (``["trainer"]["var_wo_ddp"]``). Strict: missing,
    unexpected or misshapen keys are an error naming them (only the buffers recomputed from the config
    may be absent). Eval mode."""
    if preset is None and "depth" not in config_overrides:
        raise ConfigError(f"load_dd_var needs a preset ({', '.join(DD_PRESETS)}) or the model arguments (depth, ...)")
    args = {**_from_vae(vae, config_overrides, set_patch_nums="patch_nums" not in DD_PRESETS.get(preset or "", {})),
            **config_overrides}
    cfg = DDVARConfig.preset(preset, **args)
    source = source_name(checkpoint)
    raw = read_state_dict(checkpoint)
    if isinstance(raw, Mapping) and isinstance(raw.get("trainer"), Mapping):
        raw = raw["trainer"]
    state = dict(select_weights(raw, weights, auto="ema", ema_key="ema_parameters",
                                raw_keys=("var_wo_ddp", *RAW_KEYS), source=source))
    state = {**_derived_buffers(cfg), **state}
    model = build_loaded(DDVAR, cfg, state, source=source, device=device, dtype=dtype)
    return model.bind_tokenizer(vae)
