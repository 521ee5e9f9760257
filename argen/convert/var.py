"""Official VAR checkpoints -> argen modules.

argen's key names are the official ones, so conversion is unwrapping (flat ``.pth`` state dicts;
training checkpoints under ``["trainer"]["var_wo_ddp"]`` / ``["trainer"]["vae_local"]``) and a strict
load with clear messages.

    vae = load_var_vae("vae_ch160v4096z32.pth")
    var = load_var("var_d16.pth", "d16", vae=vae)        # bound to its VQ-VAE, eval mode
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from argen.convert.checkpoint import RAW_KEYS, Checkpoint, build_loaded, read_state_dict, select_weights, source_name
from argen.errors import ConfigError
from argen.generators.var import PRESETS as VAR_PRESETS
from argen.generators.var import VAR, VARConfig
from argen.tokenizers.msvq import MultiScaleVQConfig, MultiScaleVQVAE


def _state(checkpoint: Checkpoint, trainer_key: str, weights: str) -> tuple[dict[str, torch.Tensor], str]:
    """A flat release file as is, or a training checkpoint's ``["trainer"][trainer_key]``; VAR's trainer keeps
    no EMA weights, so ``weights="ema"`` is an error naming what the file holds."""
    source = source_name(checkpoint)
    raw = read_state_dict(checkpoint)
    if isinstance(raw, Mapping) and isinstance(raw.get("trainer"), Mapping):
        raw = raw["trainer"]
    return dict(select_weights(raw, weights, auto="raw", ema_key=None, raw_keys=(trainer_key, *RAW_KEYS),
                               source=source)), source


def load_var_vae(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    weights: str = "auto",
    device: torch.device | str = "cpu",
    **vae_args: Any,
) -> MultiScaleVQVAE:
    """Load the official multi-scale VQ-VAE (``vae_ch160v4096z32.pth``; preset
    "vae_ch160v4096z32" or "vae_ch160v4096z32-512" for d36's scales, or the official VQVAE arguments);
    ``weights`` as for :func:`load_var`."""
    cfg = MultiScaleVQConfig.preset(preset or (None if vae_args else "vae_ch160v4096z32"), **vae_args)
    state, source = _state(checkpoint, "vae_local", weights)
    hits = state.get("quantize.ema_vocab_hit_SV")
    if hits is not None and hits.shape[0] != len(cfg.v_patch_nums):
        # a usage statistic of training, per scale: the official loader swaps it too
        state["quantize.ema_vocab_hit_SV"] = torch.zeros(len(cfg.v_patch_nums), hits.shape[1], dtype=hits.dtype)
    return build_loaded(MultiScaleVQVAE, cfg, state, source=source, device=device)


def load_var(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    vae: MultiScaleVQVAE | None = None,
    weights: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **var_args: Any,
) -> VAR:
    """Load an official VAR transformer (``var_d16.pth`` ...; preset "d16" ... "d36", or the official
    VAR arguments). With ``vae`` the model is bound to it: as the official ``build_vae_var``, the
    vocabulary size and ``Cvae`` (and ``patch_nums`` unless the preset or the arguments set them) come
    from the VQ-VAE; an explicit value that contradicts it is an error. ``weights``: "auto" / "raw" (VAR
    keeps no EMA weights). Strict, eval mode."""
    if preset is None and "depth" not in var_args:
        raise ConfigError(f"load_var needs a preset ({', '.join(VAR_PRESETS)}) or the model arguments (depth, ...)")
    if vae is not None:
        var_args = {**_from_vae(vae, var_args, set_patch_nums="patch_nums" not in VAR_PRESETS.get(preset or "", {})),
                    **var_args}
    cfg = VARConfig.preset(preset, **var_args)
    state, source = _state(checkpoint, "var_wo_ddp", weights)
    model = build_loaded(VAR, cfg, state, source=source, device=device, dtype=dtype)
    return model.bind_tokenizer(vae) if vae is not None else model


def _from_vae(vae: MultiScaleVQVAE, var_args: Mapping[str, Any], *, set_patch_nums: bool) -> dict[str, Any]:
    """The VAR arguments a VQ-VAE fixes (vocab_size, Cvae, patch_nums); explicit ones must agree with it."""
    vc = getattr(vae, "config", None)
    if getattr(vae, "kind", None) != "multiscale" or vc is None:
        raise ConfigError(f"VAR needs a multi-scale VQ-VAE, got {type(vae).__name__}")
    fixed = {"vocab_size": vc.vocab_size, "Cvae": vc.z_channels}
    if set_patch_nums:
        fixed["patch_nums"] = list(vc.v_patch_nums)
    clashes = [f"{k}={var_args[k]!r} but the VQ-VAE has {v!r}" for k, v in fixed.items()
               if k in var_args and (list(var_args[k]) if k == "patch_nums" else var_args[k]) != v]
    if clashes:
        raise ConfigError("load_var arguments contradict the VQ-VAE: " + "; ".join(clashes))
    return fixed
