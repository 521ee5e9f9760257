"""Released image-GPT weights (``transformers`` format: ``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``, and the palette in ``preprocessor_config.json``) -> argen modules.

argen's :class:`~argen.generators.igpt.ImageGPT` has ``ImageGPTForCausalImageModeling``'s key names and
shapes, so conversion is a strict load; transformers is never imported.

    gen = load_igpt("imagegpt-small/")                 # folder, or a weights file + config=
    palette = load_igpt_palette("imagegpt-small/preprocessor_config.json")
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import torch

from argen.convert.checkpoint import Checkpoint, build_loaded, read_state_dict, source_name, unwrap
from argen.errors import CheckpointError, ConfigError
from argen.generators.igpt import ImageGPT, ImageGPTConfig
from argen.tokenizers.palette import PaletteTokenizer, read_palette

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# transformers config entries that do not shape the model (generation, bookkeeping)
_BOOKKEEPING = {"_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
                "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings",
                "gradient_checkpointing", "type_vocab_size", "add_cross_attention", "output_attentions",
                "output_hidden_states", "return_dict"}


def igpt_config(source: str | Path | Mapping[str, Any] | None = None, **overrides: Any) -> ImageGPTConfig:
    """An :class:`ImageGPTConfig` from a transformers ``config.json`` (path or dict) and/or keywords
    (a preset name as ``preset=``); entries that shape nothing are dropped, unknown ones are an error."""
    raw: dict[str, Any] = {}
    if source is not None:
        if isinstance(source, Mapping):
            raw = dict(source)
        else:
            path = Path(source)
            try:
                raw = json.loads(path.read_text())
            except FileNotFoundError:
                raise CheckpointError(f"image-GPT config not found: {path}") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"{path} is not a JSON config ({exc})") from None
        if raw.get("model_type", "imagegpt") != "imagegpt":
            raise ConfigError(f"{source_name(source)}: model_type {raw['model_type']!r}, not an image-GPT ('imagegpt')")
        if raw.get("add_cross_attention"):
            raise ConfigError("image-GPT with cross-attention (add_cross_attention) is not supported")
        if raw.get("tie_word_embeddings"):
            raise ConfigError("image-GPT with tied input/output embeddings is not supported (released: untied)")
    args = {k: v for k, v in {**raw, **overrides}.items() if k not in _BOOKKEEPING}
    preset = args.pop("preset", None)
    known = {f.name for f in fields(ImageGPTConfig)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"unknown image-GPT config entries {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return ImageGPTConfig.preset(preset, **args)


def _weights_in(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"no image-GPT weights in {folder} (looked for {', '.join(WEIGHT_FILES)})")


def load_igpt(checkpoint: Checkpoint, config: str | Path | Mapping[str, Any] | None = None, *,
              device: torch.device | str = "cpu", dtype: torch.dtype | None = None, **overrides: Any) -> ImageGPT:
    """Released (transformers-format) image-GPT weights -> :class:`ImageGPT`, strictly, eval mode.
    ``checkpoint``: a folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), a weights
    file, or a state dict; ``config``: the ``config.json`` (default: the one beside the weights) or a
    dict; ``overrides``: config entries (a ``preset`` name: igpt-s, igpt-m, igpt-l)."""
    if not isinstance(checkpoint, Mapping):
        path = Path(checkpoint)
        if path.is_dir():
            checkpoint = _weights_in(path)
            config = config if config is not None else path / "config.json"
        elif config is None and (path.parent / "config.json").is_file():
            config = path.parent / "config.json"
    if config is None and "preset" not in overrides and "n_embd" not in overrides:
        raise ConfigError("load_igpt needs the model's config.json (config=...) or a preset (igpt-s, igpt-m, igpt-l)")
    cfg = igpt_config(config, **overrides)
    source = source_name(checkpoint)
    state = unwrap(read_state_dict(checkpoint), source=source)
    return build_loaded(ImageGPT, cfg, state, source=source, device=device, dtype=dtype)


def load_igpt_palette(path: str | Path, *, device: torch.device | str = "cpu") -> PaletteTokenizer:
    """The palette of ``ImageGPTImageProcessor`` (``preprocessor_config.json``; or a .npy / JSON list)."""
    return PaletteTokenizer.from_colours(read_palette(path), source=str(path)).to(device)
