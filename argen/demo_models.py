"""What the demo offers: the models usable here, what each supports without loading its weights,
and a small cache of loaded pipelines.

The cache keeps at most ``max_loaded`` pipelines and drops the least recently used one first, so
memory stays bounded when users switch models.
"""
from __future__ import annotations

import gc
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from argen.errors import ArgenError, UnknownModelError
from argen.families import get_family
from argen.pipeline import INDEX_NAME, ARPipeline


@dataclass(frozen=True)
class ModelInfo:
    """A model as the demo's controls need it: name, kind, classes and the card's defaults."""

    name: str
    kind: str
    num_classes: int
    class_names: tuple[str, ...] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    local: bool = True  # False: the weights are downloaded on first use

    @property
    def label(self) -> str:
        return self.name if self.local else f"{self.name} (downloads on first use)"

    def class_choices(self) -> list[tuple[str, int]]:
        """(label, id) pairs for a class dropdown; ImageNet labels carry their id (names repeat)."""
        names = self.class_names or [f"class {i}" for i in range(self.num_classes)]
        if self.num_classes > 100:
            return [(f"{i}: {n}", i) for i, n in enumerate(names)]
        return [(n, i) for i, n in enumerate(names)]

    def samplers(self) -> list[str]:
        from types import SimpleNamespace

        from argen.samplers import samplers_for

        return samplers_for(SimpleNamespace(kind=self.kind))


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...] | None:
    """The 1000 ImageNet class names from torchvision's weight metadata (no download needed)."""
    try:
        from torchvision.models import ResNet50_Weights

        names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    except (ImportError, AttributeError, KeyError):
        return None
    return tuple(names) if len(names) == 1000 else None


def folder_info(folder: str | os.PathLike, name: str | None = None, description: str = "") -> ModelInfo:
    """Info of a ``save_pretrained`` folder, read from its JSON files (no weights loaded)."""
    from argen.components import component_class
    from argen.modeling import CONFIG_NAME, read_json

    folder = Path(folder)
    index = read_json(folder / INDEX_NAME, f"{folder} is not an argen pretrained folder (no {INDEX_NAME})")
    gen_cfg = read_json(folder / index.get("generator", "generator") / CONFIG_NAME, f"{folder} has no generator config")
    kind = getattr(component_class(gen_cfg["_class"]), "kind", "token")
    names = index.get("class_names")
    return ModelInfo(
        name=name or index.get("name") or folder.name,
        kind=kind,
        num_classes=int(gen_cfg.get("num_classes", len(names or []) or 1000)),
        class_names=tuple(names) if names else None,
        defaults=dict(index.get("defaults") or {}),
        description=description or f"pretrained folder {folder}",
    )


def _official_is_local(entry: Any, checkpoint_dir: str | os.PathLike | None) -> bool:
    from argen.hub import resolve_file

    try:
        for comp, fname in entry.files.items():
            resolve_file(entry.repo_id, fname, checkpoint_dir=checkpoint_dir, local_files_only=True,
                         url=entry.urls.get(comp))
    except ArgenError:
        return False
    return True


def model_info(name: str, checkpoint_dir: str | os.PathLike | None = None) -> ModelInfo:
    """Info of a zoo name or a pretrained folder, without loading weights."""
    from argen.zoo import BUNDLED, OFFICIAL, known_names

    if name in BUNDLED:
        e = BUNDLED[name]
        return folder_info(e.path, name, e.description)
    if name in OFFICIAL:
        e = OFFICIAL[name]
        family = get_family(e.family)
        # the releases are ImageNet class-to-image models, or unconditional (image-GPT: num_classes 0)
        n = getattr(family.config_class(), "num_classes", 1000)
        return ModelInfo(name, family.kind, n, imagenet_class_names() if n == 1000 else None, dict(e.defaults),
                         e.description, _official_is_local(e, checkpoint_dir))
    if Path(name).is_dir():
        return folder_info(name)
    raise UnknownModelError(f"unknown model {name!r}. Known models: {', '.join(known_names())} "
                            f"(or a folder written by save_pretrained)")


def available_models(checkpoint_dir: str | os.PathLike | None = None, offline: bool | None = None) -> list[ModelInfo]:
    """The bundled models that are present, the official ones whose files are here, and (when
    online) the other official ones, which are downloaded on first use."""
    from argen.zoo import BUNDLED, OFFICIAL

    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    out = [folder_info(e.path, e.name, e.description) for e in BUNDLED.values() if (e.path / INDEX_NAME).is_file()]
    for name in OFFICIAL:
        info = model_info(name, checkpoint_dir)
        if info.local or not offline:
            out.append(info)
    return out


class PipelineCache:
    """Loaded pipelines by name, at most ``max_loaded`` of them (least recently used dropped)."""

    def __init__(self, max_loaded: int = 2, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 checkpoint_dir: str | os.PathLike | None = None, offline: bool = False) -> None:
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be >= 1, got {max_loaded}")
        self.max_loaded, self.device, self.dtype = max_loaded, device, dtype
        self.checkpoint_dir, self.offline = checkpoint_dir, offline
        self._pipes: OrderedDict[str, ARPipeline] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> list[str]:
        """Names of the loaded pipelines, least recently used first."""
        with self._lock:
            return list(self._pipes)

    def lock(self, name: str) -> threading.Lock:
        """The lock that lets one generation at a time use the model ``name``."""
        with self._lock:
            return self._locks.setdefault(name, threading.Lock())

    def get(self, name: str) -> ARPipeline:
        """The pipeline for ``name``, loaded on first use (loads are serialised)."""
        import argen

        with self._lock:
            if name in self._pipes:
                self._pipes.move_to_end(name)
                return self._pipes[name]
            while len(self._pipes) >= self.max_loaded:  # make room before loading the next one
                self._pipes.popitem(last=False)
                _release_memory()
            pipe = argen.load(name, device=self.device, dtype=self.dtype, checkpoint_dir=self.checkpoint_dir,
                              local_files_only=self.offline)
            self._pipes[name] = pipe
            return pipe

    def clear(self) -> None:
        with self._lock:
            self._pipes.clear()
            _release_memory()


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
