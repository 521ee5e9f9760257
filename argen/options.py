"""Parsing of user-given options shared by the CLI, the demo, the benchmarks and the evaluation
scripts (kept below all of them, so none imports the CLI)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from argen.errors import ConfigError


def parse_key_values(items: Iterable[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` items (CLI flags, sampler specs); values are JSON when they parse as
    JSON, else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"option must be key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def json_arguments(path: str | None, items: Iterable[str] | None = None) -> dict[str, Any]:
    """Keyword arguments from a JSON object file (``--x-config``) overridden by ``key=value`` items
    (``--x-arg``); no file and no items give {}."""
    data: dict[str, Any] = {}
    if path:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must hold a JSON object")
    return {**data, **parse_key_values(items)}
