"""Save/load for argen's loadable modules (generators and tokenizers), diffusers-style.

A pretrained component is a folder with ``config.json`` (the config dataclass plus ``"_class"``, the
registry name of the module class) and ``model.safetensors``. Configs are plain dataclasses; the
registry maps names to classes so a folder can be loaded without knowing its class in advance.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from argen.errors import CheckpointError, ConfigError

_REGISTRY: dict[str, type["Pretrained"]] = {}
T = TypeVar("T", bound="Pretrained")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def register(name: str):
    """Class decorator: make a Pretrained subclass loadable by ``name`` from config.json."""

    def deco(cls: type[T]) -> type[T]:
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def registered_class(name: str) -> type["Pretrained"]:
    """The class registered as ``name``. Only imported modules have registered: load folders of any
    class through :func:`argen.components.load_component`, which imports them all."""
    if name not in _REGISTRY:
        raise CheckpointError(f"unknown component class {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_config(config_class: type, presets: dict[str, dict[str, Any]], preset: str | None,
                 overrides: dict[str, Any], what: str) -> Any:
    """A config from an optional named preset plus keyword overrides (unknown presets and argument
    names are errors that list the valid ones)."""
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"unknown {what} preset {preset!r}; known: {', '.join(presets)}")
        base = dict(presets[preset])
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown {what} argument(s): {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return config_class(**{**base, **overrides})


def read_json(path: Path, missing: str) -> dict[str, Any]:
    """A JSON object from ``path``; ``missing`` is the message when the file is absent."""
    if not path.is_file():
        raise CheckpointError(missing)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def config_to_dict(config: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}


class Pretrained(nn.Module):
    """Base of loadable modules: a config dataclass in ``self.config`` and save/load of a folder."""

    config_class: ClassVar[type]
    registry_name: ClassVar[str] = ""

    def init_buffers(self) -> None:
        """(Re)compute non-persistent buffers; called after building on the meta device."""

    @classmethod
    def from_config(cls: type[T], config: Any, *, device: torch.device | str | None = None) -> T:
        with torch.device(device or "cpu"):
            model = cls(config)
        return model

    def save_pretrained(self, directory: str | Path, *, storage_dtype: torch.dtype | None = None) -> Path:
        """Write config.json + model.safetensors. ``storage_dtype`` (e.g. torch.float16) stores the
        floating-point tensors in that type to halve the file; loading casts them back to the model's."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = {"_class": self.registry_name, **config_to_dict(self.config)}
        (directory / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu().clone() for k, v in self.state_dict().items()}
        if storage_dtype is not None:
            for k, v in state.items():
                if v.is_floating_point():
                    # infinities (attention masks) are stored as such; a finite value must stay finite
                    c = v.to(storage_dtype)
                    if torch.isnan(v).any():
                        raise ConfigError(f"{k} holds NaN: not saved")
                    if (torch.isfinite(v) & ~torch.isfinite(c)).any():
                        raise ConfigError(f"{k} does not fit in {storage_dtype}")
                    state[k] = c
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "argen_class": self.registry_name})
        return directory

    @classmethod
    def from_pretrained(
        cls: type[T],
        directory: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> T:
        from argen.convert.checkpoint import load_into, read_state_dict

        directory = Path(directory)
        raw = read_json(directory / CONFIG_NAME, f"{directory} is not a pretrained argen component: no {CONFIG_NAME}")
        klass = registered_class(raw.pop("_class", cls.registry_name))
        if cls.registry_name and not issubclass(klass, cls):
            raise CheckpointError(f"{directory} holds a {klass.registry_name!r}, not a {cls.registry_name!r}")
        model = klass.from_config(build_config(klass.config_class, {}, None, raw, klass.__name__), device="meta")
        state = read_state_dict(directory / WEIGHTS_NAME)
        load_into(model, state, source=str(directory))
        model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
        return model.eval()
