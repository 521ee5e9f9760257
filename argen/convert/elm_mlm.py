"""Official ELM masked-LM checkpoints (``gpt/mlm{L,XL,XXL}-1-16.pth`` of the Hugging Face repo xuantonglll/ELM)
-> :class:`argen.generators.elm_mlm.ElmMLM`.

The released files are flat ``torch.save`` state dicts in the official key names (argen's names), loaded
strictly. Known discrepancy, unverified for want of the files: the README's sizes (1.51 / 3.27 / 5.86 GB)
are about one dim x 65537 matrix smaller than what the published ``llama/mlm_model.py`` builds (1.78 / 3.61 /
6.26 GB in float32), i.e. they match that class without its unused ``output`` head. ``keep_unused=False``
builds the model without the unused ``pos_embed`` / ``proj`` / ``output`` and ignores those keys where a file
has them; everything the model computes with is still loaded strictly.

    mlm = load_elm_mlm("mlmL-1-16.pth", "L")                       # the published layout
    mlm = load_elm_mlm("mlmL-1-16.pth", "L", keep_unused=False)    # without the unused heads
"""
from __future__ import annotations

import re
from typing import Any

import torch

from argen.convert.checkpoint import Checkpoint, build_loaded, read_state_dict, select_weights, source_name
from argen.errors import CheckpointError, ConfigError
from argen.generators.elm_mlm import PRESETS, ElmMLM, ElmMLMConfig

# stored by the published class, never used by its rope2d forward
UNUSED = re.compile(r"^(pos_embed\.weight|proj\.weight|output(\.\d+)?\.weight)$")

SIZE_NOTE = ("note: the released mlm*-1-16.pth files are about one dim x 65537 matrix smaller than the published "
             "llama/mlm_model.py builds (probably saved without its unused output head); if only pos_embed / proj / "
             "output keys are missing, pass keep_unused=False")


def load_elm_mlm(
    checkpoint: Checkpoint,
    preset: str | None = None,
    *,
    keep_unused: bool = True,
    weights: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **model_args: Any,
) -> ElmMLM:
    """Load an official ELM MLM checkpoint (path or state dict) strictly into an ``ElmMLM`` in eval mode.

    ``preset``: "L" / "XL" / "XXL" (the released 1-16 models) and/or official ``ModelArgs`` names (dim,
    n_layer, n_head, token_each, code_dim, ...). ``keep_unused=False``: the lean layout (see the module doc).
    ``weights``: "auto" / "raw" take the flat file (or a training file's ``["model"]``), "ema" its ``["ema"]``.
    Files are read with ``torch.load(weights_only=True, map_location="cpu")``."""
    if preset is None and "dim" not in model_args:
        raise ConfigError(f"load_elm_mlm needs a preset ({', '.join(PRESETS)}) or the model arguments (dim, ...)")
    cfg = ElmMLMConfig.preset(preset, keep_unused=keep_unused, **model_args)
    source = source_name(checkpoint)
    state = select_weights(read_state_dict(checkpoint), weights, auto="raw", ema_key="ema", source=source)
    if not keep_unused:
        state = {k: v for k, v in state.items() if not UNUSED.match(k)}
    try:
        return build_loaded(ElmMLM, cfg, state, source=source, device=device, dtype=dtype)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {SIZE_NOTE}" if keep_unused else str(exc)) from None
