"""Load any pretrained component folder by the class named in its config.json.

This sits above :mod:`argen.generators` and :mod:`argen.tokenizers` (importing them registers every
component class), so that :mod:`argen.modeling`, which they build on, never imports them back.
"""
from __future__ import annotations

from pathlib import Path

import torch

import argen.generators  # noqa: F401  (registers the generator classes)
import argen.tokenizers  # noqa: F401  (registers the tokenizer classes)
from argen.modeling import Pretrained, registered_class


def component_class(name: str) -> type[Pretrained]:
    """The registered class named ``name`` (the ``_class`` of a config.json)."""
    return registered_class(name)


def load_component(
    directory: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Pretrained:
    """A generator or tokenizer folder written by ``save_pretrained``, whatever its class."""
    return Pretrained.from_pretrained(directory, device=device, dtype=dtype)
