"""Image-GPT (Chen et al., "Generative Pretraining from Pixels", ICML 2020): a GPT-2 over the pixels of
a small image in raster order, each pixel the id of its colour in a palette (:mod:`argen.tokenizers.palette`).

Names, shapes and numerics follow ``transformers``' ``ImageGPTForCausalImageModeling`` so the released
``openai/imagegpt-*`` weights load strictly and give its logits: learned position embeddings, pre-norm
blocks whose norm is image-GPT's RMS-style LayerNorm (no centring, no bias), fused ``c_attn`` and GPT-2's
``Conv1D`` layout (weights stored (in, out)), quick-GELU MLP, ``lm_head`` over the palette only (the
start-of-image token, the last id of ``vocab_size``, is never predicted).

The sequence is [start, pixel 0, ..., pixel N-2] at positions 0..N-1 (N = ``n_positions``, 1024 for
32 x 32): logits at position i predict pixel i. image-GPT is unconditional (``num_classes`` 0); argen's
own models may be class-conditional (``num_classes`` > 0): a class embedding (with a null class for
guidance when ``class_dropout_prob`` > 0) is added to the start token.

    model = ImageGPT(ImageGPTConfig.preset("igpt-s"))
    logits = model(pixels, model.null_condition(2))  # teacher forcing, (B, 1024, 512)
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
from argen.generators.llamagen import LabelEmbedding
from argen.modeling import Pretrained, build_config, register
from argen.nn import CacheWindow, Conv1D, KVCache, RMSNorm, attention

# the released configurations (openai/imagegpt-small, -medium, -large: config.json)
PRESETS: dict[str, dict[str, int]] = {
    "igpt-s": dict(n_embd=512, n_layer=24, n_head=8),
    "igpt-m": dict(n_embd=1024, n_layer=36, n_head=8),
    "igpt-l": dict(n_embd=1536, n_layer=48, n_head=16),
}

ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class ImageGPTConfig:
    """``transformers.ImageGPTConfig``'s names and defaults (the fields that shape the model), plus
    argen's ``num_classes`` / ``class_dropout_prob`` (0 / 0: unconditional, as image-GPT)."""

    vocab_size: int = 513  # palette colours + the start-of-image token (the last id)
    n_positions: int = 1024  # pixels per image (a square: 32 x 32)
    n_embd: int = 512
    n_layer: int = 24
    n_head: int = 8
    n_inner: int | None = None  # MLP width, default 4 * n_embd
    activation_function: str = "quick_gelu"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    num_classes: int = 0
    class_dropout_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        side = math.isqrt(self.n_positions)
        if side * side != self.n_positions:
            raise ConfigError(f"n_positions {self.n_positions} is not a square number of pixels")
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(f"unknown activation_function {self.activation_function!r}; "
                              f"known: {', '.join(ACTIVATIONS)}")
        if self.vocab_size < 3:
            raise ConfigError(f"vocab_size {self.vocab_size} must be the palette size + 1 (the start token)")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (0: unconditional), got {self.num_classes}")
        if self.num_classes == 0 and self.class_dropout_prob:
            raise ConfigError("class_dropout_prob is for a class-conditional model (num_classes > 0)")

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "ImageGPTConfig":
        return build_config(cls, PRESETS, name, overrides, "image-GPT")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def side(self) -> int:
        return math.isqrt(self.n_positions)


class Attention(nn.Module):
    def __init__(self, cfg: ImageGPTConfig, layer: int) -> None:
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.c_attn = Conv1D(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_embd)
        scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.scale_attn_weights else 1.0
        self.scale = scale / (layer + 1) if cfg.scale_attn_by_inverse_layer_idx else scale
        self.upcast = cfg.reorder_and_upcast_attn
        self.attn_pdrop = cfg.attn_pdrop
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int, window: CacheWindow | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        dtype = q.dtype
        if cache is not None:
            k, v = cache.update(layer, k, v, window)
        if self.upcast:  # image-GPT's reorder_and_upcast_attn: the scores in float32
            q, k, v = q.float(), k.float(), v.float()
        if cache is None:
            out = attention(q, k, v, causal=True, scale=self.scale,
                            dropout_p=self.attn_pdrop if self.training else 0.0)
        else:
            out = attention(q, k, v, mask=window.mask, causal=window.causal, scale=self.scale)
        return self.resid_dropout(self.c_proj(out.to(dtype).transpose(1, 2).reshape(b, t, d)))


class MLP(nn.Module):
    def __init__(self, cfg: ImageGPTConfig) -> None:
        super().__init__()
        inner = cfg.n_inner or 4 * cfg.n_embd
        self.c_fc = Conv1D(cfg.n_embd, inner)
        self.c_proj = Conv1D(inner, cfg.n_embd)
        self.act = ACTIVATIONS[cfg.activation_function]
        self.dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ImageGPTConfig, layer: int) -> None:
        super().__init__()
        # image-GPT's LayerNorm is x / sqrt(mean(x^2) + eps) * weight: an RMSNorm
        self.ln_1 = RMSNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = Attention(cfg, layer)
        self.ln_2 = RMSNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int, window: CacheWindow | None) -> torch.Tensor:
        h = x + self.attn(self.ln_1(x), cache, layer, window)
        return h + self.mlp(self.ln_2(h))


class Transformer(nn.Module):
    """``transformer.*`` of the released checkpoints."""

    def __init__(self, cfg: ImageGPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = RMSNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)


@register("igpt")
class ImageGPT(Pretrained):
    """Pixel-wise generator of kind ``token``: the shared ``ar`` / ``sjd`` / compiled samplers drive it."""

    config_class = ImageGPTConfig
    kind = "token"
    sampling_conventions: dict[str, str] = {}
    token_shape: tuple[int, ...] = ()  # one palette id per pixel

    def __init__(self, config: ImageGPTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.transformer = Transformer(c)
        if c.num_classes:
            self.class_embedding = LabelEmbedding(c.num_classes, c.n_embd, c.class_dropout_prob)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size - 1, bias=False)
        self._tokenizer: tuple = ()  # the bound palette (a tuple: not a submodule, not in the state dict)

    def init_weights(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit norms, the residual
        projections (``c_proj``) scaled by 1 / sqrt(2 n_layer)."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln_" in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=std / math.sqrt(2 * self.config.n_layer) if "c_proj" in name else std)

    # -- protocol attributes -------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        return self.config.n_positions

    @property
    def prefix_len(self) -> int:
        return 1

    @property
    def vocab_size(self) -> int:
        """Palette colours the model predicts (the config's ``vocab_size`` also counts the start token)."""
        return self.config.vocab_size - 1

    @property
    def sos_id(self) -> int:
        return self.config.vocab_size - 1

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def conditional(self) -> bool:
        return self.config.num_classes > 0

    @property
    def token_grid(self) -> tuple[int, int]:
        return (self.config.side, self.config.side)

    def bind_tokenizer(self, tokenizer: Any) -> "ImageGPT":
        """Attach the palette whose colour ids this model predicts (its size must be the model's)."""
        if tokenizer.codebook_size != self.vocab_size:
            raise ConfigError(f"the palette has {tokenizer.codebook_size} colours, the model predicts "
                              f"{self.vocab_size} (vocab_size {self.config.vocab_size} counts the start token)")
        self._tokenizer = (tokenizer,)
        return self

    @property
    def code_vectors(self) -> torch.Tensor:
        """(V, 3): each palette id's colour (the bound palette's)."""
        if not self._tokenizer:
            raise ConfigError("no palette bound to this model: call model.bind_tokenizer(palette) (argen.load does)")
        return self._tokenizer[0].code_vectors

    def null_condition(self, batch_size: int) -> torch.Tensor:
        """The null class ``num_classes`` of classifier-free guidance (a conditional model trained with
        class dropout); an unconditional model has nothing to guide."""
        if not self.conditional:
            raise ConfigError("this model is unconditional: classifier-free guidance has nothing to guide "
                              "(use cfg_scale 1)")
        if self.config.class_dropout_prob <= 0:
            raise ConfigError("this model was built without a null class (class_dropout_prob=0): no CFG")
        return torch.full((batch_size,), self.config.num_classes, dtype=torch.long, device=self.lm_head.weight.device)

    def check_condition(self, cond: Any, allow_null: bool = False) -> torch.Tensor:
        """Class ids in range. An unconditional model's one condition is id 0 (its start token alone),
        one per image: other ids are an error."""
        dev = self.lm_head.weight.device
        if not self.conditional:
            ids = torch.as_tensor(cond, device=dev)
            if ids.dim() != 1 or ids.is_floating_point() or bool((ids != 0).any()):
                raise ConfigError("this model is unconditional: it takes no classes (ask for a number of images: "
                                  "pipe.generate(num_images=N), CLI -n N)")
            return ids.long()
        return check_class_ids(cond, self.config.num_classes, dev, allow_null and self.config.class_dropout_prob > 0)

    # -- forward passes --------------------------------------------------------------------------
    def _prefix(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, 1, D): the start token's embedding (+ the class embedding of a conditional model)."""
        t = self.transformer
        sos = t.wte.weight[self.sos_id].expand(cond.shape[0], 1, -1)
        return sos + self.class_embedding(cond).to(sos.dtype) if self.conditional else sos

    def _run(self, h: torch.Tensor, cache: KVCache | None = None, window: CacheWindow | None = None) -> torch.Tensor:
        t = self.transformer
        h = t.drop(h)
        for i, block in enumerate(t.h):
            h = block(h, cache, i, window)
        return self.lm_head(t.ln_f(h)).float()

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, *, include_last: bool = False) -> torch.Tensor:
        """Teacher forcing: pixels (B, N) -> logits (B, N, V), ``logits[:, i]`` predicting pixel i from
        the prefix and pixels < i (``include_last``: N + 1 rows, the last one past the image)."""
        n = self.config.n_positions
        if tokens.dim() != 2 or tokens.shape[1] != n:
            side = self.config.side
            raise ConfigError(f"this model is built for {side}x{side} images ({n} pixels per row of tokens), "
                              f"got tokens of shape {tuple(tokens.shape)}")
        inp = tokens if include_last else tokens[:, :-1]
        h = torch.cat([self._prefix(cond), self.transformer.wte(inp)], dim=1)
        pos = torch.arange(h.shape[1], device=h.device).clamp(max=n - 1)
        return self._run(h + self.transformer.wpe(pos))

    def new_cache(self, batch_size: int, max_len: int | None = None, *, dtype: torch.dtype | None = None) -> KVCache:
        c, w = self.config, self.lm_head.weight
        return KVCache(c.n_layer, batch_size, c.n_head, max_len or (1 + c.n_positions), c.head_dim,
                       dtype=dtype or w.dtype, device=w.device)

    def _positions(self, window: CacheWindow) -> torch.Tensor:
        return window.table_rows(self.transformer.wpe.weight)

    def prefill(self, cond: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Write the prefix into an empty cache; logits (B, V) of pixel 0."""
        window = cache.prepare(1)
        logits = self._run(self._prefix(cond) + self._positions(window), cache, window)
        cache.advance(window)
        return logits[:, -1]

    def decode(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append pixels (B, W) after each row's cached length; logits (B, W, V) of the pixels after them."""
        window = cache.prepare(tokens.shape[1])
        logits = self._decode_window(tokens, cache, window)
        cache.advance(window)
        return logits

    def decode_at(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Pixels (B, W) at explicit cache positions (B, W), over the whole cache through a position
        mask (fixed shapes for a compiled step); the caller moves the lengths."""
        return self._decode_window(tokens, cache, cache.window_at(positions))

    def _decode_window(self, tokens: torch.Tensor, cache: KVCache, window: CacheWindow) -> torch.Tensor:
        return self._run(self.transformer.wte(tokens) + self._positions(window), cache, window)
