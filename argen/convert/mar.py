"""Official MAR checkpoints -> argen modules.

- The KL-16 VAE (``kl16.ckpt``): weights under ``["model"]`` next to training-only ``loss.*`` entries
  (discriminator, LPIPS, learned log-variance) that the official ``strict=False`` load skips. argen's key
  names are the official ones, so ``load_vae`` unwraps, drops ``loss.*`` and loads strictly: any other
  missing or unexpected key is an error that names it.
- The MAR transformer (``checkpoint-last.pth``, EMA weights under ``["model_ema"]``): ``load_mar``.

    vae = load_vae("kl16.ckpt")                        # KLVAE, eval mode, latents scaled by 0.2325
    mar = load_mar("checkpoint-last.pth", "mar_base")  # the EMA weights (the reported FIDs)
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from argen.convert.checkpoint import load_into, read_state_dict, unwrap
from argen.convert.llamagen import Checkpoint
from argen.errors import ConfigError
from argen.generators.mar import MAR, MARConfig
from argen.generators.mar import PRESETS as MAR_PRESETS
from argen.tokenizers.kl import KLVAE, KLConfig

_VAE_TRAINING_ONLY = "loss."


def _vae_state(checkpoint: Checkpoint) -> tuple[dict[str, torch.Tensor], str]:
    source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "state dict"
    state = unwrap(read_state_dict(checkpoint), ("model", "state_dict", "module"), source=source)
    return {k: v for k, v in state.items() if not k.startswith(_VAE_TRAINING_ONLY)}, source


def load_vae(
    checkpoint: Checkpoint,
    preset: str | None = "kl16",
    *,
    device: torch.device | str = "cpu",
    **vae_args: Any,
) -> KLVAE:
    """Load MAR's KL VAE (``kl16.ckpt``; preset "kl16", or the official ``AutoencoderKL`` arguments
    embed_dim, ch_mult, ... as overrides). Strict except for ``loss.*`` entries; eval mode."""
    cfg = KLConfig.preset(preset, **vae_args)
    state, source = _vae_state(checkpoint)
    model = KLVAE.from_config(cfg, device="meta")
    load_into(model, state, source=source)
    return model.to(device).eval()


def load_mar(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    ema: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **mar_args: Any,
) -> MAR:
    """Load an official MAR (``checkpoint-last.pth``; preset "mar_base", "mar_large", "mar_huge", or
    the official ``MAR`` arguments). ``ema`` (default) takes ``["model_ema"]``, the weights behind the
    reported FIDs; False takes the raw ``["model"]``. Strict, eval mode."""
    if preset is None and "encoder_embed_dim" not in mar_args:
        raise ConfigError(f"load_mar needs a preset ({', '.join(MAR_PRESETS)}) or the MAR arguments (encoder_embed_dim, ...)")
    cfg = MARConfig.preset(preset, **mar_args)
    source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "state dict"
    raw = read_state_dict(checkpoint)
    key = "model_ema" if ema else "model"
    if isinstance(raw, Mapping) and ema and "model" in raw and "model_ema" not in raw:
        raise ConfigError(f"{source} has no EMA weights ('model_ema'); pass ema=False to load the raw 'model' weights")
    state = unwrap(raw, (key, "state_dict", "module"), source=source)
    model = MAR.from_config(cfg, device="meta")
    load_into(model, state, source=source)
    return model.to(device=device, dtype=dtype).eval()
