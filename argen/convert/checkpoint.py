"""Reading checkpoint files safely and loading them strictly, with messages that name the problem."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from argen.errors import CheckpointError

StateDict = dict[str, torch.Tensor]


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> Any:
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


def unwrap(obj: Any, keys: Iterable[str] = ("model", "module", "state_dict"), *, source: str = "") -> StateDict:
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


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "") -> nn.Module:
    """Strictly load ``state`` into ``model`` (which may live on the meta device), keeping the
    model's parameter dtypes; buffers computed from the config are rebuilt afterwards."""
    check_state_dict(model, state, source=source)
    on_meta = any(t.is_meta for t in model.state_dict().values())
    if on_meta:
        ref = model.state_dict()
        state = {
            k: v.to(ref[k].dtype) if v.is_floating_point() and v.dtype != ref[k].dtype else v
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
