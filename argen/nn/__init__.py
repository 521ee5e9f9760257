"""Shared neural-network blocks: attention, KV cache, RoPE, norms, MLPs, stochastic depth."""
from argen.nn.attention import (
    BACKENDS,
    attention,
    attention_backend,
    causal_mask,
    get_attention_backend,
    resolve_backend,
    set_attention_backend,
)
from argen.nn.drop import drop_path
from argen.nn.kv_cache import CacheWindow, KVCache
from argen.nn.linear import Conv1D, Linear, linear
from argen.nn.mlp import SwiGLU, llama_ffn_hidden
from argen.nn.norms import RMSNorm
from argen.nn.rope import apply_rope, rope_1d_table, rope_2d_table

__all__ = [
    "BACKENDS",
    "attention",
    "attention_backend",
    "causal_mask",
    "get_attention_backend",
    "resolve_backend",
    "set_attention_backend",
    "drop_path",
    "CacheWindow",
    "KVCache",
    "Conv1D",
    "Linear",
    "linear",
    "SwiGLU",
    "llama_ffn_hidden",
    "RMSNorm",
    "apply_rope",
    "rope_1d_table",
    "rope_2d_table",
]
