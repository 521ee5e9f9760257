"""ELM's masked language model (arXiv 2410.16257, official ``llama/mlm_model.py``): LlamaGen's blocks with
bidirectional attention over a binary autoencoder's sub-tokens, predicting every masked position at once
(generator kind "masked", sampler ``mask``).

Structure, in the official key names (so the released configurations' layouts load strictly):

* one ``tok_embedder`` of 2^code_dim + 1 rows, the last the mask token; every sub-token of a position is its
  own sequence element, the class embedding repeated ``token_each`` times in front, the 2D RoPE rows (class
  rows zero, as LlamaGen's) repeated ``token_each`` times;
* the logits come from ``mlm_layer``: Linear (with bias), exact GELU, LayerNorm (eps 1e-5), then a product
  with the (detached) token embedding table plus a learned bias; the class positions and the mask-token
  column are dropped, so a position's logits are (token_each, 2^code_dim);
* ``pos_embed``, ``proj`` (token_each > 1) and ``output`` are built by the published class but never used
  with its rope2d positions; ``keep_unused=False`` leaves them out (the released files are about one
  dim x 65537 matrix smaller than the published class builds: see :mod:`argen.convert.elm_mlm`).

Not checked against official numbers: there is no MLM fixture (only the layouts), and the published class
cannot even be built as is (it reads ``config.model_type``, which its ModelArgs lacks).

    model = ElmMLM(ElmMLMConfig.preset("L"))
    logits = model.masked_logits(tokens, masked, classes)  # (B, 256, 1, 65536) float32
    loss = model(tokens, classes)                          # training: a random official-style mask
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
from argen.generators.elm import ELMConfig
from argen.generators.llamagen import LabelEmbedding, TransformerBlock
from argen.modeling import Pretrained, build_config, register
from argen.nn import RMSNorm, rope_2d_table

# the released MLMs (gpt/mlm{L,XL,XXL}-1-16.pth): one 16-bit sub-token per position
PRESETS: dict[str, dict[str, int]] = {
    "L": dict(n_layer=24, n_head=16, dim=1024, token_each=1, code_dim=16),
    "XL": dict(n_layer=36, n_head=20, dim=1280, token_each=1, code_dim=16),
    "XXL": dict(n_layer=48, n_head=24, dim=1536, token_each=1, code_dim=16),
}


@dataclass
class ElmMLMConfig(ELMConfig):
    """The AR model's ``ModelArgs`` (:class:`ELMConfig`) and three of the masked LM's own: ``smoothing`` and
    ``gen_iter`` drive the training loss and its masks, ``keep_unused`` the layout."""

    token_each: int = 4
    smoothing: float = 0.1  # label smoothing of the training cross-entropy
    gen_iter: int = 10  # training masks: floor(N cos(pi/2 k / gen_iter)) positions, k uniform in [0, gen_iter)
    keep_unused: bool = True  # build the unused pos_embed / proj / output as the published class does

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gen_iter < 1:
            raise ConfigError(f"gen_iter must be positive, got {self.gen_iter}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ConfigError(f"smoothing must lie in [0, 1), got {self.smoothing}")

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "ElmMLMConfig":
        return build_config(cls, PRESETS, name, overrides, "ELM MLM")

    @property
    def codebook_size(self) -> int:  # one sub-token's vocabulary (the mask token not counted)
        return 2**self.code_dim


class MlmLayer(nn.Module):
    """The official head: fc -> exact GELU -> LayerNorm, then a product with the word embeddings + bias."""

    def __init__(self, dim: int, vocab: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.ln = nn.LayerNorm(dim, eps=1e-5)
        self.bias = nn.Parameter(torch.zeros(1, 1, vocab))

    def forward(self, x: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        h = self.ln(F.gelu(self.fc(x)))
        return torch.matmul(h, words.t()) + self.bias[..., : words.shape[0]]


@register("elm-mlm")
class ElmMLM(Pretrained):
    """Masked generator: ``masked_logits`` for the mask sampler, ``forward`` the training loss."""

    config_class = ElmMLMConfig
    kind = "masked"
    # the official linear guidance ramp reads r = (step + 1) / num_iter
    sampling_conventions: dict[str, str] = {"cfg_progress": "elm"}

    def __init__(self, config: ElmMLMConfig) -> None:
        super().__init__()
        self.config = c = config
        dim, vocab = c.dim, c.codebook_size + 1  # + the mask token
        self.cls_embedding = LabelEmbedding(c.num_classes, dim, c.class_dropout_prob)
        self.tok_embedder = nn.Embedding(vocab, dim)
        self.tok_dropout = nn.Dropout(c.token_dropout_p)
        if c.keep_unused:
            self.pos_embed = nn.Embedding(c.block_size, dim)
        rates = [c.drop_path_rate * i / max(c.n_layer - 1, 1) for i in range(c.n_layer)]
        self.layers = nn.ModuleList(TransformerBlock(c, r, causal=False) for r in rates)
        if c.keep_unused and c.token_each > 1:
            self.proj = nn.Linear(c.token_each * dim, dim, bias=False)
        self.norm = RMSNorm(dim, eps=c.norm_eps)
        if c.keep_unused:
            self.output = (nn.ModuleList(nn.Linear(dim, vocab, bias=False) for _ in range(c.token_each))
                           if c.token_each > 1 else nn.Linear(dim, vocab, bias=False))
        self.mlm_layer = MlmLayer(dim, vocab)
        self.init_buffers()

    def init_buffers(self) -> None:
        c = self.config
        device = self.tok_embedder.weight.device
        with torch.device("cpu"):  # RoPE rows: class, then the grid; each repeated per sub-token
            table = rope_2d_table(c.grid_size, c.head_dim, c.rope_base, n_prefix=1)
        table = table.repeat_interleave(c.token_each, dim=0)
        self.register_buffer("rope", table.to("cpu" if device.type == "meta" else device), persistent=False)

    def init_weights(self) -> None:
        """Official initialisation: N(0, 0.02) for Linear / Embedding weights, zero biases and output heads."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=self.config.initializer_range)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        if self.config.keep_unused:
            for m in self.output.modules():
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.weight)

    # -- protocol attributes -------------------------------------------------------------------
    @property
    def token_shape(self) -> tuple[int, ...]:
        return (self.config.token_each,)  # (G,) also for G = 1, as the binary tokenizer's codes

    @property
    def seq_len(self) -> int:
        return self.config.block_size

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    @property
    def mask_token(self) -> int:
        return self.config.codebook_size

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def token_grid(self) -> tuple[int, int]:
        g = self.config.grid_size
        return (g, g)

    def null_condition(self, batch_size: int) -> torch.Tensor:
        if self.config.class_dropout_prob <= 0:
            raise ConfigError("this model was built without a null class (class_dropout_prob=0): no CFG")
        return torch.full((batch_size,), self.num_classes, dtype=torch.long, device=self.tok_embedder.weight.device)

    def check_condition(self, cond: Any, allow_null: bool = False) -> torch.Tensor:
        null = allow_null and self.config.class_dropout_prob > 0
        return check_class_ids(cond, self.num_classes, self.tok_embedder.weight.device, null)

    # -- passes ----------------------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor, masked: torch.Tensor) -> None:
        shape = (self.seq_len, *self.token_shape)
        if tokens.dim() != 1 + len(shape) or tuple(tokens.shape[1:]) != shape:
            raise ConfigError(f"tokens must be (B, {', '.join(map(str, shape))}), got {tuple(tokens.shape)}")
        if tuple(masked.shape) != tuple(tokens.shape[:2]) or masked.dtype != torch.bool:
            raise ConfigError(f"masked must be a bool tensor {tuple(tokens.shape[:2])}, got "
                              f"{masked.dtype} {tuple(masked.shape)}")

    def _logits(self, tokens: torch.Tensor, masked: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The official forward on inputs whose masked positions read the mask token -> (B, N, G, V) float32."""
        b, n, g = tokens.shape[0], self.seq_len, self.config.token_each
        idx = tokens.masked_fill(masked[..., None], self.mask_token)
        h = self.tok_embedder(idx)  # (B, N, G, D)
        prefix = self.cls_embedding.embedding_table(cond)[:, None, None].expand(b, 1, g, -1).to(h.dtype)
        h = self.tok_dropout(torch.cat([prefix, h], dim=1).reshape(b, (n + 1) * g, -1))
        rope = self.rope.unsqueeze(0)
        for layer in self.layers:
            h = layer(h, rope)
        h = self.norm(h[:, g:])  # the class elements predict nothing
        words = self.tok_embedder.weight.detach()[: self.vocab_size]  # the head never trains the table
        return self.mlm_layer(h, words).float().view(b, n, g, self.vocab_size)

    def masked_logits(self, tokens: torch.Tensor, masked: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, G) with ``masked`` (B, N) True where unknown (their values are ignored), classes (B,)
        (``num_classes`` = the null class) -> logits (B, N, G, 2^code_dim) float32 for every position."""
        self._check_tokens(tokens, masked)
        return self._logits(tokens.long(), masked, cond)

    def random_mask(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The official training mask (B, N): one step k uniform in [0, gen_iter) for the batch, then
        max(1, floor(N cos(pi/2 k / gen_iter))) positions per image, chosen uniformly."""
        n, steps = self.seq_len, self.config.gen_iter
        dev = self.tok_embedder.weight.device
        k = int(torch.randint(0, steps, (1,), generator=generator, device=dev))
        count = max(1, math.floor(n * math.cos(math.pi / 2.0 * k / steps)))
        order = torch.rand(batch_size, n, generator=generator, device=dev).argsort(dim=1)
        return torch.zeros(batch_size, n, dtype=torch.bool, device=dev).scatter_(1, order[:, :count], True)

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, masked: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss for tokens (B, N, G) of classes (B,): the label-smoothed (``smoothing``, official 0.1)
        cross-entropy of the masked positions' sub-tokens, averaged over them. ``masked`` (B, N): which
        positions are hidden (default: :meth:`random_mask`); in training mode classes are dropped to the null
        class with ``class_dropout_prob``. Random draws come from ``generator``."""
        b = tokens.shape[0]
        masked = self.random_mask(b, generator) if masked is None else masked
        self._check_tokens(tokens, masked)
        c = self.config
        if self.training and c.class_dropout_prob > 0:
            drop = torch.rand(b, device=cond.device, generator=generator) < c.class_dropout_prob
            cond = torch.where(drop, torch.full_like(cond, c.num_classes), cond)
        tokens = tokens.long()
        logits = self._logits(tokens, masked, cond)
        loss = F.cross_entropy(logits.reshape(-1, self.vocab_size), tokens.reshape(-1), reduction="none",
                               label_smoothing=c.smoothing).view(tokens.shape)
        weight = masked[..., None].expand_as(loss).to(loss.dtype)
        return (loss * weight).sum() / weight.sum()
