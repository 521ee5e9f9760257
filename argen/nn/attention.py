"""The one attention entry point of argen.

Every generator calls :func:`attention`; the backend is chosen here, once:

* ``sdpa`` (default): ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient /
  cuDNN on CUDA, fused CPU kernels on CPU).
* ``xformers``: ``xformers.ops.memory_efficient_attention``, only when importable and the tensors are
  on CUDA; otherwise argen falls back to ``sdpa`` and logs why (once).
* ``math``: an explicit float32 softmax(QK^T) V, the reference the others are tested against.

The default can be changed with :func:`set_attention_backend` or the ``ARGEN_ATTN_BACKEND``
environment variable. Layout everywhere is (B, H, T, D).
"""
from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

from argen.errors import ConfigError

logger = logging.getLogger(__name__)

BACKENDS = ("sdpa", "xformers", "math")
_default_backend = os.environ.get("ARGEN_ATTN_BACKEND", "sdpa")
_warned: set[str] = set()


def set_attention_backend(name: str) -> None:
    """Set the process-wide default attention backend (``sdpa``, ``xformers`` or ``math``)."""
    global _default_backend
    _check_name(name)
    _default_backend = name


def get_attention_backend() -> str:
    return _default_backend


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Temporarily use another default backend (``with attention_backend("math"): ...``)."""
    global _default_backend
    _check_name(name)
    old, _default_backend = _default_backend, name
    try:
        yield
    finally:
        _default_backend = old


def _check_name(name: str) -> None:
    if name not in BACKENDS:
        raise ConfigError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        logger.warning(msg)


def _xformers_ops():
    try:
        import xformers.ops as xops  # noqa: F401

        return xops
    except Exception as exc:  # ImportError, or a broken C++ extension
        _warn_once(f"xformers attention requested but unusable ({type(exc).__name__}: {exc}); using sdpa")
        return None


def resolve_backend(name: str | None, device: torch.device) -> str:
    """The backend that will actually run for tensors on ``device`` (xformers falls back to sdpa)."""
    name = name or _default_backend
    _check_name(name)
    if name == "xformers":
        if device.type != "cuda":
            _warn_once(f"xformers attention needs CUDA tensors (got {device.type}); using sdpa")
            return "sdpa"
        if _xformers_ops() is None:
            return "sdpa"
    return name


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (q_len, k_len) mask, True = attend; aligned to the lower right (query i sits at key
    position k_len - q_len + i), which is what decoding with a KV cache needs."""
    offset = k_len - q_len
    qi = torch.arange(q_len, device=device)[:, None]
    kj = torch.arange(k_len, device=device)[None, :]
    return kj <= qi + offset


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention.

    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) with H a multiple of Hkv (grouped-query attention).
    mask: boolean (True = attend) or additive float, broadcastable to (B, H, Tq, Tk).
    causal: lower-right aligned causal masking (combined with ``mask`` if both are given).
    scale: softmax scale, default 1/sqrt(D).
    """
    backend = resolve_backend(backend, q.device)
    tq, tk = q.shape[-2], k.shape[-2]
    if causal and mask is not None:
        cm = causal_mask(tq, tk, q.device)
        mask = (mask & cm) if mask.dtype == torch.bool else mask.masked_fill(~cm, float("-inf"))
        causal = False
    if backend == "math":
        return _math_attention(q, k, v, mask, causal, scale, dropout_p)
    if backend == "xformers":
        return _xformers_attention(q, k, v, mask, causal, scale, dropout_p)
    gqa = q.shape[1] != k.shape[1]
    if causal and tq != tk:
        mask, causal = causal_mask(tq, tk, q.device), False
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal, scale=scale, enable_gqa=gqa
    )


def _repeat_kv(x: torch.Tensor, n_head: int) -> torch.Tensor:
    rep = n_head // x.shape[1]
    return x if rep == 1 else x.repeat_interleave(rep, dim=1)


def _math_attention(q, k, v, mask, causal, scale, dropout_p):
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale
    if causal:
        mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v.float()).to(q.dtype)


def _xformers_attention(q, k, v, mask, causal, scale, dropout_p):
    xops = _xformers_ops()
    b, h, tq, d = q.shape
    k, v = _repeat_kv(k, h), _repeat_kv(v, h)
    bias = None
    if causal:
        bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    elif mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        # xformers wants a (B, H, Tq, Tk) bias whose last dim is 8-aligned in memory
        tk = k.shape[-2]
        pad = (-tk) % 8
        full = torch.zeros(b, h, tq, tk + pad, dtype=q.dtype, device=q.device)
        bias = full[..., :tk]
        bias.copy_(mask.to(q.dtype).expand(b, h, tq, tk))
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, p=dropout_p, scale=scale
    )
    return out.transpose(1, 2)
