"""Reading checkpoint files safely and loading them strictly, with messages that name the problem."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from argen.errors import CheckpointError, ConfigError

StateDict = dict[str, torch.Tensor]
Checkpoint = str | os.PathLike | Mapping[str, Any]  # a file, or a state dict already in memory

# which weights of a training checkpoint a loader takes: the family's choice, the EMA average, or the live ones
WEIGHTS = ("auto", "ema", "raw")
RAW_KEYS = ("model", "module", "state_dict")  # DDP, deepspeed, Lightning-style wrappings of the live weights


def source_name(checkpoint: Checkpoint) -> str:
    """How messages name a checkpoint: its path, or "state dict" for one passed in memory."""
    return "state dict" if isinstance(checkpoint, Mapping) else str(checkpoint)


def read_state_dict(source: Checkpoint) -> Any:
    """Read a checkpoint: ``.safetensors`` with safetensors, anything else with
    ``torch.load(weights_only=True)`` (never unpickling arbitrary objects). A mapping is returned as is."""
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"expected a checkpoint file, got a folder: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt, truncated or not a checkpoint): {first}"
        ) from None


def unwrap(obj: Any, keys: Iterable[str] = RAW_KEYS, *, source: str = "") -> StateDict:
    """Return the state dict inside an official checkpoint: the first of ``keys`` that is present
    (DDP ``["model"]``, deepspeed ``["module"]``, ...), else the object itself if it is already a
    flat state dict (FSDP files)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source or 'checkpoint'} does not hold a state dict (got {type(obj).__name__})")
    for key in keys:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{source or 'checkpoint'} holds no tensors at the top level nor under any of {list(keys)}; "
            f"its keys: {', '.join(list(map(str, obj))[:10])}"
        )
    return tensors


def select_weights(obj: Any, weights: str, *, auto: str, ema_key: str | None, raw_keys: Iterable[str] = RAW_KEYS,
                   source: str = "") -> StateDict:
    """The state dict a loader's ``weights`` ("auto" | "ema" | "raw") picks in an official file.

    "ema" is ``obj[ema_key]``; "raw" the first of ``raw_keys`` present, or a flat file as is; "auto" is
    the family's ``auto`` choice, except that a flat file (one set of weights, the release format) loads
    as is. A wrapped file without the chosen weights is an error naming the keys it holds."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    raw_keys = tuple(raw_keys)
    kind = auto if weights == "auto" else weights
    if kind == "ema" and isinstance(obj, Mapping):
        if ema_key is not None and isinstance(obj.get(ema_key), Mapping):
            return unwrap(obj, (ema_key,), source=source)
        wrapped = any(isinstance(obj.get(k), Mapping) for k in raw_keys)
        if wrapped or weights == "ema":
            what = f"no {ema_key!r} entry" if ema_key else "this format keeps none"
            held = (f"its keys: {_listing(list(map(str, obj)))}" if wrapped
                    else "it is a flat state dict, one set of weights")
            raise CheckpointError(f"{source or 'checkpoint'} has no EMA weights ({what}; {held}); "
                                  "pass weights='raw' to load the live weights")
    return unwrap(obj, raw_keys, source=source)


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "") -> None:
    """Raise CheckpointError naming missing keys, unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes ({len(shapes)}): {_listing(shapes, 6)}")
    if problems:
        what = type(model).__name__
        raise CheckpointError(
            f"checkpoint {source or ''} does not fit {what} (check the model size/config): " + "; ".join(problems)
        )


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied where its storage is not 64-byte aligned (a safetensors file packs tensors at any offset).
    Assigned as a parameter, an unaligned tensor changes the CPU kernels' rounding: a reloaded model would
    not reproduce its own outputs bit for bit."""
    return t if t.device.type != "cpu" or t.data_ptr() % 64 == 0 else t.clone()


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "") -> nn.Module:
    """Strictly load ``state`` into ``model`` (which may live on the meta device), keeping the
    model's parameter dtypes; buffers computed from the config are rebuilt afterwards."""
    check_state_dict(model, state, source=source)
    on_meta = any(t.is_meta for t in model.state_dict().values())
    if on_meta:
        ref = model.state_dict()
        state = {
            k: v.to(ref[k].dtype) if v.is_floating_point() and v.dtype != ref[k].dtype else _aligned(v)
            for k, v in state.items()
        }
        model.load_state_dict(state, strict=True, assign=True)
    else:
        model.load_state_dict(state, strict=True)
    # buffers derived from the config (RoPE tables, masks) are rebuilt: on meta they do not exist yet,
    # and a stored copy may be stale (an older argen averaged VAR's -inf mask into NaN in its EMA)
    for m in model.modules():
        init = getattr(m, "init_buffers", None)
        if init is not None:
            init()
    return model


def build_loaded(cls: type, config: Any, state: Mapping[str, torch.Tensor], *, source: str = "",
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """``cls`` built on the meta device (no memory for random weights), ``state`` loaded strictly, moved to
    ``device`` / ``dtype``, in eval mode: the last step of every official loader."""
    model = cls.from_config(config, device="meta")
    load_into(model, state, source=source)
    return model.to(device=device, dtype=dtype).eval()
