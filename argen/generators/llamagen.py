"""LlamaGen GPT (Sun et al. 2024, arXiv 2406.06525): a Llama-style decoder over VQ codes in raster order.

Key names and numerics follow the official ``autoregressive/models/gpt.py`` so official checkpoints load
strictly and give the official logits: pre-norm blocks with RMSNorm (float32 normalisation, cast, then
weight), fused ``wqkv``, SwiGLU FFN, LlamaGen's 2D RoPE whose condition rows are zero, class token
(c2i) or projected caption tokens (t2i) as the prefix, float32 logits.

Shapes: tokens (B, N) with N = block_size (= grid^2), classes (B,), logits (B, N, vocab).

    model = LlamaGen(LlamaGenConfig.preset("GPT-B"))
    logits = model(tokens, classes)            # teacher forcing: logits[:, i] predicts tokens[:, i]
    cache = model.new_cache(batch_size=2)
    next_logits = model.prefill(classes, cache)  # (B, V): predicts token 0
    logits = model.decode(tokens[:, :1], cache)  # (B, 1, V): appends to the cache
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from argen.errors import ConfigError
from argen.generators.condition import check_class_ids
from argen.modeling import Pretrained, build_config, register
from argen.nn import (
    CacheWindow,
    KVCache,
    Linear,
    RMSNorm,
    SwiGLU,
    apply_rope,
    attention,
    drop_path,
    llama_ffn_hidden,
    rope_2d_table,
)

# Released class-to-image configurations (official GPT_models); 3B uses head_dim 100.
PRESETS: dict[str, dict[str, int]] = {
    "GPT-B": dict(n_layer=12, n_head=12, dim=768),
    "GPT-L": dict(n_layer=24, n_head=16, dim=1024),
    "GPT-XL": dict(n_layer=36, n_head=20, dim=1280),
    "GPT-XXL": dict(n_layer=48, n_head=24, dim=1536),
    "GPT-3B": dict(n_layer=24, n_head=32, dim=3200),
}


@dataclass
class LlamaGenConfig:
    """The official ``ModelArgs`` (same names and defaults)."""

    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    caption_dim: int = 2048
    class_dropout_prob: float = 0.1
    model_type: str = "c2i"
    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256

    def __post_init__(self) -> None:
        if self.model_type not in ("c2i", "t2i"):
            raise ConfigError(f"model_type must be 'c2i' or 't2i', got {self.model_type!r}")
        if self.dim % self.n_head:
            raise ConfigError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise ConfigError(f"n_head {self.n_head} is not a multiple of n_kv_head {kv}")
        if (self.dim // self.n_head) % 4:
            raise ConfigError(f"head_dim {self.dim // self.n_head} must be a multiple of 4 for 2D RoPE")
        g = math.isqrt(self.block_size)
        if g * g != self.block_size:
            raise ConfigError(f"block_size {self.block_size} is not a square number of tokens")
        if self.model_type == "c2i" and self.cls_token_num != 1:
            raise ConfigError("class-to-image LlamaGen uses exactly one class token (cls_token_num=1)")

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "LlamaGenConfig":
        return build_config(cls, PRESETS, name, overrides, "LlamaGen GPT")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)


class LabelEmbedding(nn.Module):
    """Class table with one extra row (index num_classes) for the CFG null class when dropout > 0."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)  # (B, 1, dim)


class CaptionMLP(nn.Module):
    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim, bias=False)
        self.fc2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CaptionEmbedding(nn.Module):
    """t2i prefix: caption features (B, T, caption_dim) -> (B, T, dim); the null caption is a buffer."""

    def __init__(self, caption_dim: int, dim: int, n_tokens: int, dropout_prob: float) -> None:
        super().__init__()
        self.dropout_prob = dropout_prob
        self.cap_proj = CaptionMLP(caption_dim, dim)
        self.register_buffer("uncond_embedding", torch.randn(n_tokens, caption_dim) / caption_dim**0.5)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(caption.shape[0], device=caption.device) < self.dropout_prob
            caption = torch.where(drop[:, None, None], self.uncond_embedding, caption)
        return self.cap_proj(caption)


class Attention(nn.Module):
    """Causal self-attention over the sequence (and the KV cache when one is given); ``causal=False``:
    every element sees the whole sequence (ELM's masked LM)."""

    def __init__(self, cfg: LlamaGenConfig, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head or cfg.n_head, cfg.head_dim
        self.wqkv = Linear(cfg.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout_p = cfg.attn_dropout_p
        self.resid_dropout = nn.Dropout(cfg.resid_dropout_p)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None, layer: int,
                window: CacheWindow | None) -> torch.Tensor:
        b, t, _ = x.shape
        nq, nkv = self.n_head, self.n_kv_head
        qkv = self.wqkv(x).view(b, t, nq + 2 * nkv, self.head_dim)  # [q heads | k heads | v heads]
        qk = apply_rope(qkv[:, :, : nq + nkv], rope)  # q and k rotated in one call
        q, k = qk[:, :, :nq].transpose(1, 2), qk[:, :, nq:].transpose(1, 2)
        v = qkv[:, :, nq + nkv :].transpose(1, 2)
        if cache is None:
            out = attention(q, k, v, causal=self.causal, dropout_p=self.attn_dropout_p if self.training else 0.0)
        else:
            k, v = cache.update(layer, k, v, window)
            out = attention(q, k, v, mask=window.mask, causal=window.causal)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, t, -1)))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: LlamaGenConfig, drop_path: float, causal: bool = True) -> None:
        super().__init__()
        self.attention = Attention(cfg, causal)
        hidden = llama_ffn_hidden(cfg.dim, cfg.multiple_of, cfg.ffn_dim_multiplier)
        self.feed_forward = SwiGLU(cfg.dim, hidden, cfg.ffn_dropout_p)
        self.attention_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.drop_path = drop_path

    def _dp(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_path, self.training)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                window: CacheWindow | None = None) -> torch.Tensor:
        h = x + self._dp(self.attention(self.attention_norm(x), rope, cache, layer, window))
        return h + self._dp(self.feed_forward(self.ffn_norm(h)))


@register("llamagen")
class LlamaGen(Pretrained):
    """Token-wise generator: teacher-forced ``forward``; ``prefill`` / ``decode`` for the samplers."""

    config_class = LlamaGenConfig
    kind = "token"
    sampling_conventions: dict[str, str] = {}  # constant guidance, the HF top-p rule (the defaults)
    token_shape: tuple[int, ...] = ()  # one code per position

    def __init__(self, config: LlamaGenConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.build_token_io()
        if c.model_type == "c2i":
            self.cls_embedding = LabelEmbedding(c.num_classes, c.dim, c.class_dropout_prob)
        else:
            self.cls_embedding = CaptionEmbedding(c.caption_dim, c.dim, c.cls_token_num, c.class_dropout_prob)
        self.tok_dropout = nn.Dropout(c.token_dropout_p)
        rates = [c.drop_path_rate * i / max(c.n_layer - 1, 1) for i in range(c.n_layer)]
        self.layers = nn.ModuleList(TransformerBlock(c, r) for r in rates)
        self.norm = RMSNorm(c.dim, eps=c.norm_eps)
        self._tokenizer: tuple = ()  # the bound VQ tokenizer (a tuple: not a submodule, not in the state dict)
        self.init_buffers()

    def build_token_io(self) -> None:
        """The token embedding and the output head (ELM splits both per sub-token)."""
        c = self.config
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.output = Linear(c.dim, c.vocab_size, bias=False)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, W, *token_shape) -> input vectors (B, W, dim)."""
        return self.tok_embeddings(tokens)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, W, dim) -> float32 logits (B, W, *token_shape, V)."""
        return self.output(h).float()

    @property
    def _ref(self) -> torch.Tensor:
        """A parameter whose device and dtype are the model's."""
        return self.norm.weight

    def init_buffers(self) -> None:
        c = self.config
        device = self._ref.device
        with torch.device("cpu"):  # tables are built on the CPU even inside a meta-device context
            table = rope_2d_table(c.grid_size, c.head_dim, c.rope_base, n_prefix=c.cls_token_num)
        self.register_buffer("rope", table.to("cpu" if device.type == "meta" else device), persistent=False)

    def init_weights(self) -> None:
        """Official initialisation: N(0, 0.02) for Linear/Embedding weights, zero output layer."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.output.weight)

    # -- protocol attributes -------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        return self.config.block_size

    @property
    def prefix_len(self) -> int:
        return self.config.cls_token_num

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def token_grid(self) -> tuple[int, int]:
        g = self.config.grid_size
        return (g, g)

    def bind_tokenizer(self, tokenizer: Any) -> "LlamaGen":
        """Attach the VQ tokenizer whose codes this model predicts (its codebook size must be the vocabulary)."""
        if tokenizer.codebook_size != self.config.vocab_size:
            raise ConfigError(f"the tokenizer has {tokenizer.codebook_size} codes, the generator's vocabulary "
                              f"{self.config.vocab_size}")
        self._tokenizer = (tokenizer,)
        return self

    @property
    def code_vectors(self) -> torch.Tensor:
        """(V, C): the bound tokenizer's vector of each code (the space the flow sampler's noise lives in)."""
        if not self._tokenizer:
            raise ConfigError("no VQ tokenizer bound to this model: call model.bind_tokenizer(vq) (argen.load does)")
        return self._tokenizer[0].code_vectors

    def null_condition(self, batch_size: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """The unconditional input for CFG: class ``num_classes`` (c2i) or the null caption (t2i)."""
        dev = self._ref.device
        if self.config.model_type == "c2i":
            if self.config.class_dropout_prob <= 0:
                raise ConfigError("this model was built without a null class (class_dropout_prob=0): no CFG")
            return torch.full((batch_size,), self.config.num_classes, dtype=torch.long, device=dev)
        null = self.cls_embedding.uncond_embedding
        return null.unsqueeze(0).expand(batch_size, -1, -1)

    def check_condition(self, cond: torch.Tensor, allow_null: bool = False) -> torch.Tensor:
        """Validate classes (c2i: integer ids in range) or caption features (t2i)."""
        c = self.config
        if c.model_type == "c2i":
            null = allow_null and c.class_dropout_prob > 0
            return check_class_ids(cond, c.num_classes, self._ref.device, null)
        if cond.dim() != 3 or cond.shape[1:] != (c.cls_token_num, c.caption_dim):
            raise ConfigError(
                f"t2i condition must be caption features (B, {c.cls_token_num}, {c.caption_dim}), "
                f"got {tuple(cond.shape)}"
            )
        return cond

    # -- forward passes --------------------------------------------------------------------------
    def embed_condition(self, cond: torch.Tensor) -> torch.Tensor:
        emb = self.cls_embedding(cond)
        return emb.to(self._ref.dtype)

    def _blocks(self, h: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None,
                window: CacheWindow | None = None) -> torch.Tensor:
        """The transformer blocks without the final norm (a distilled student reads both)."""
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, cache, i, window)
        return h

    def _run(self, h: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None,
             window: CacheWindow | None = None) -> torch.Tensor:
        return self.norm(self._blocks(h, rope, cache, window))

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, *, include_last: bool = False) -> torch.Tensor:
        """Teacher forcing: logits (B, N, V), ``logits[:, i]`` predicts ``tokens[:, i]`` given the
        condition and tokens < i. ``include_last`` also feeds the last token (N + 1 rows)."""
        inp = tokens if include_last else tokens[:, :-1]
        prefix = self.embed_condition(cond)
        h = self.tok_dropout(torch.cat([prefix, self.embed_tokens(inp)], dim=1))
        t = h.shape[1]
        if t > self.rope.shape[0]:
            raise ConfigError(f"sequence of {t} positions exceeds the model's {self.rope.shape[0]}")
        h = self._run(h, self.rope[:t].unsqueeze(0))
        return self.head(h[:, self.prefix_len - 1 :])

    def new_cache(
        self, batch_size: int, max_len: int | None = None, *, dtype: torch.dtype | None = None
    ) -> KVCache:
        """A KV cache for ``batch_size`` rows (CFG doubles it) holding prefix + all image tokens."""
        c = self.config
        w = self._ref
        return KVCache(
            c.n_layer,
            batch_size,
            c.n_kv_head or c.n_head,
            max_len or (c.cls_token_num + c.block_size),
            c.head_dim,
            dtype=dtype or w.dtype,
            device=w.device,
        )

    def _rope_for(self, window: CacheWindow) -> torch.Tensor:
        return window.table_rows(self.rope)

    def prefill(self, cond: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Write the condition prefix into an empty cache; return logits (B, V) for token 0."""
        h = self.embed_condition(cond)
        window = cache.prepare(h.shape[1])
        h = self._run(h, self._rope_for(window), cache, window)
        cache.advance(window)
        return self.head(h[:, -1])

    def decode(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append tokens (B, W) after each row's cached length; return logits (B, W, V) where row j
        predicts the token after ``tokens[:, j]``."""
        window = cache.prepare(tokens.shape[1])
        logits = self._decode_window(tokens, cache, window)
        cache.advance(window)
        return logits

    def decode_at(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Write tokens (B, W) at explicit cache positions (B, W) and attend over the whole cache
        through a position mask; logits (B, W, V) as :meth:`decode`. Every step has the same shapes
        and no Python-int state, so ``torch.compile`` (and CUDA graphs) can capture it once; the
        lengths are not moved (the caller's bookkeeping, outside the compiled region)."""
        return self._decode_window(tokens, cache, cache.window_at(positions))

    def _decode_window(self, tokens: torch.Tensor, cache: KVCache, window: CacheWindow) -> torch.Tensor:
        h = self.embed_tokens(tokens)
        h = self._run(h, self._rope_for(window), cache, window)
        return self.head(h)

