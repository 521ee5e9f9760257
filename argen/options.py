"""Parsing of user-given options shared by the CLI, the demo, the benchmarks and the evaluation
scripts (kept below all of them, so none imports the CLI)."""
from __future__ import annotations

import json
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
