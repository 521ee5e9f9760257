"""One entry point for a tokenizer given as a folder or a hub id: argen's own pretrained folders and
diffusers ``AutoencoderKL`` folders (or hub ids) both load, so pipelines and training take either."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from argen.errors import CheckpointError, DownloadError
from argen.modeling import CONFIG_NAME, Pretrained


def is_diffusers_vae_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a diffusers ``AutoencoderKL`` config (``_class_name`` AutoencoderKL)."""
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "AutoencoderKL"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def load_tokenizer(path_or_id: str | os.PathLike, device: torch.device | str = "cpu") -> Any:
    """An argen tokenizer folder, a diffusers AutoencoderKL folder, or (not a local path) a diffusers
    hub id such as ``stabilityai/sd-vae-ft-ema``, loaded on ``device`` in eval mode."""
    from argen.tokenizers.diffusers_vae import DiffusersVAE

    path = Path(path_or_id)
    if is_diffusers_vae_folder(path):
        return DiffusersVAE.from_diffusers(path).to(device).eval()
    if path.exists():
        return Pretrained.from_pretrained(path, device=device)
    if str(path_or_id).count("/") == 1 and not str(path_or_id).startswith((".", "/")):
        try:
            return DiffusersVAE.from_diffusers(str(path_or_id)).to(device).eval()
        except DownloadError as exc:
            raise CheckpointError(f"tokenizer {str(path_or_id)!r}: no such local folder, and as a diffusers hub id: "
                                  f"{exc}") from None
    raise CheckpointError(f"tokenizer {str(path_or_id)!r} not found: give an argen tokenizer folder, a diffusers "
                          "AutoencoderKL folder or a diffusers hub id (owner/name)")
