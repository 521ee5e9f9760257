"""Official MAR checkpoints -> argen modules.

- The KL-16 VAE (``kl16.ckpt``): weights under ``["model"]`` next to training-only ``loss.*`` entries
  (discriminator, LPIPS, learned log-variance) that the official ``strict=False`` load skips. argen's key
  names are the official ones, so ``load_vae`` unwraps, drops ``loss.*`` and loads strictly: any other
  missing or unexpected key is an error that names it.
- The MAR transformer (``checkpoint-last.pth``, EMA weights under ``["model_ema"]``): ``load_mar``.

    vae = load_vae("kl16.ckpt")                        # KLVAE, eval mode, latents scaled by 0.2325
    mar = load_mar("checkpoint-last.pth", "mar_base")  # the EMA weights (the reported FIDs); weights="raw": ["model"]
"""
from __future__ import annotations

from typing import Any

import torch

from argen.convert.checkpoint import Checkpoint, build_loaded, read_state_dict, select_weights, source_name
from argen.errors import ConfigError
from argen.generators.mar import MAR, MARConfig
from argen.generators.mar import PRESETS as MAR_PRESETS
from argen.tokenizers.kl import KLVAE, KLConfig

_VAE_TRAINING_ONLY = "loss."


def load_vae(
    checkpoint: Checkpoint,
    preset: str | None = "kl16",
    *,
    weights: str = "auto",
    device: torch.device | str = "cpu",
    **vae_args: Any,
) -> KLVAE:
    """Load MAR's KL VAE (``kl16.ckpt``; preset "kl16", or the official ``AutoencoderKL`` arguments
    embed_dim, ch_mult, ... as overrides). Strict except for ``loss.*`` entries; eval mode. The file has
    one set of weights (``["model"]``): ``weights`` "ema" is an error."""
    cfg = KLConfig.preset(preset, **vae_args)
    source = source_name(checkpoint)
    state = select_weights(read_state_dict(checkpoint), weights, auto="raw", ema_key=None, source=source)
    state = {k: v for k, v in state.items() if not k.startswith(_VAE_TRAINING_ONLY)}
    return build_loaded(KLVAE, cfg, state, source=source, device=device)


def load_mar(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    weights: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **mar_args: Any,
) -> MAR:
    """Load an official MAR (``checkpoint-last.pth``; preset "mar_base", "mar_large", "mar_huge", or
    the official ``MAR`` arguments). ``weights`` "auto" / "ema" take ``["model_ema"]``, the weights behind
    the reported FIDs; "raw" the live ``["model"]``. Strict, eval mode."""
    if preset is None and "encoder_embed_dim" not in mar_args:
        raise ConfigError(f"load_mar needs a preset ({', '.join(MAR_PRESETS)}) "
                          "or the MAR arguments (encoder_embed_dim, ...)")
    cfg = MARConfig.preset(preset, **mar_args)
    source = source_name(checkpoint)
    state = select_weights(read_state_dict(checkpoint), weights, auto="ema", ema_key="model_ema", source=source)
    return build_loaded(MAR, cfg, state, source=source, device=device, dtype=dtype)
