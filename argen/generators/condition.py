"""Validation of class conditions, shared by every class-conditional generator."""
from __future__ import annotations

from typing import Any

import torch

from argen.errors import ConfigError


def check_class_ids(cond: Any, num_classes: int, device: torch.device, allow_null: bool = False) -> torch.Tensor:
    """Classes as a 1-D int64 tensor of ids in 0..num_classes-1 (and the null class num_classes
    when ``allow_null``); anything else is a ConfigError that names the problem."""
    cond = torch.as_tensor(cond, device=device)
    if cond.numel() == 0:
        raise ConfigError("no classes given: nothing to generate")
    if cond.dim() != 1 or cond.is_floating_point():
        raise ConfigError(f"classes must be a 1-D list of integer ids, got shape {tuple(cond.shape)}")
    hi = num_classes + int(allow_null)
    bad = [int(x) for x in cond.tolist() if not 0 <= x < hi]
    if bad:
        raise ConfigError(f"class id(s) {bad} out of range: this model has classes 0..{num_classes - 1}")
    return cond.long()
