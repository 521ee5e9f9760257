"""LlamaGen Distilled Decoding student (DD, Liu et al. 2024, arXiv 2412.17153): noise -> image tokens in one pass.

The official ``DDTransformer`` (``LlamaGen/autoregressive/models/dd.py``) is the LlamaGen teacher plus deltas,
and so is this class: the same blocks, 2D RoPE, norms, class table and ``output`` head, with

* ``tok_embeddings``: a Linear(codebook_dim -> dim, bias) reading continuous 8-d vectors (codebook vectors
  or Gaussian noise) instead of the Embedding over ids;
* ``n_d_embed`` (2, dim): row 1 added at the clean positions 0..t (class token + first t tokens), row 0 after;
* ``final_layer_conti``: a PixArt-style final layer giving each position's continuous token;
* ``codebook``: the l2-normalised VQ codebook (V, codebook_dim), a non-persistent buffer (the official
  checkpoints do not hold it: it comes from the tokenizer, :meth:`DDLlamaGen.bind_tokenizer`).

Output j of :meth:`forward` belongs to input position j (its own noise), seeing the class and inputs 0..j.

    model = load_dd_llamagen("llamagen-B.pt", "dd-llamagen-b", tokenizer=vq)
    x = noise                                    # (B, 256, 8)
    for t in model.default_t_list(2):            # [0, 80]
        tt = torch.full((B,), float(t))
        tokens, logits = model.final_predict(model.perturb(x, tt, noise), labels, tt)
        x = model.final_sequence(tokens, logits, model.default_split)
    images = (vq.decode_latents(x.view(B, 16, 16, 8).permute(0, 3, 1, 2)) + 1) / 2
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from argen.errors import ConfigError
from argen.generators.distilled import ContinuousHead, released_t_list
from argen.generators.llamagen import PRESETS as GPT_PRESETS
from argen.generators.llamagen import LlamaGen, LlamaGenConfig
from argen.modeling import build_config, register

_RELEASE = dict(vocab_size=16384, block_size=256, num_classes=1000, codebook_dim=8)
# the released students (microsoft/distilled_decoding, LlamaGen-DD/llamagen-{B,L}.pt) and their README settings
PRESETS: dict[str, dict[str, int]] = {
    "dd-llamagen-b": dict(GPT_PRESETS["GPT-B"], **_RELEASE, two_step_t=80, split_t=80),
    "dd-llamagen-l": dict(GPT_PRESETS["GPT-L"], **_RELEASE, two_step_t=80, split_t=130),
}


@dataclass
class DDLlamaGenConfig(LlamaGenConfig):
    """The official DD ``ModelArgs`` (the teacher's plus ``codebook_dim``; no dropout, class dropout forced
    to 0) and the released sampling defaults: the second position of the 2-step ``t_list`` and ``split_t``."""

    token_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0
    ffn_dropout_p: float = 0.0
    class_dropout_prob: float = 0.0
    codebook_dim: int = 8
    two_step_t: int = 80  # README --t_list 0,80
    split_t: int = 80  # README --split_t (B 80, L 130)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_type != "c2i":
            raise ConfigError("the LlamaGen DD students are class-conditional (model_type 'c2i')")
        if self.codebook_dim < 1:
            raise ConfigError(f"codebook_dim must be positive, got {self.codebook_dim}")
        # the release values do not fit every size (a tiny test model): checked where they are used
        if self.two_step_t < 1 or self.split_t < 0:
            raise ConfigError(f"two_step_t must be >= 1 and split_t >= 0, got {self.two_step_t}, {self.split_t}")

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "DDLlamaGenConfig":
        return build_config(cls, PRESETS, name, overrides, "LlamaGen DD student")


@register("dd-llamagen")
class DDLlamaGen(LlamaGen):
    """The LlamaGen DD student (kind "distilled"): ``forward`` is one pass over a noisy sequence; the
    :class:`~argen.generators.protocol.DistilledGenerator` methods are the few-step sampler's steps."""

    config_class = DDLlamaGenConfig
    kind = "distilled"
    sampling_conventions: dict[str, str] = {}

    def __init__(self, config: DDLlamaGenConfig) -> None:
        super().__init__(config)
        c = config
        self.tok_embeddings = nn.Linear(c.codebook_dim, c.dim)
        # the official table keeps the null-class row although the student never drops its class
        self.cls_embedding.embedding_table = nn.Embedding(c.num_classes + 1, c.dim)
        self.n_d_embed = nn.Embedding(2, c.dim)
        self.final_layer_conti = ContinuousHead(c.dim, c.codebook_dim)
        self.init_buffers()

    def init_buffers(self) -> None:
        super().init_buffers()
        book = getattr(self, "codebook", None)
        if book is None or book.is_meta:  # built (or loaded) without a tokenizer: unbound until bind_tokenizer
            c = self.config
            device = self.tok_embeddings.weight.device
            nan = torch.full((c.vocab_size, c.codebook_dim), float("nan"), device="cpu" if device.type == "meta"
                             else device)
            self.register_buffer("codebook", nan, persistent=False)
            self.codebook_bound = False

    @torch.no_grad()
    def bind_tokenizer(self, source: Any) -> "DDLlamaGen":
        """Set the codebook from the VQ tokenizer (anything with ``quantize.embedding.weight``) or a (V, C)
        tensor of its embedding weights, l2-normalised here as the official scripts do."""
        weight = source.quantize.embedding.weight if hasattr(source, "quantize") else torch.as_tensor(source)
        c = self.config
        if tuple(weight.shape) != (c.vocab_size, c.codebook_dim):
            raise ConfigError(f"codebook of shape {tuple(weight.shape)} does not fit this student "
                              f"({c.vocab_size} codes of dim {c.codebook_dim})")
        book = F.normalize(weight.detach().float(), p=2, dim=-1)
        ref = self.tok_embeddings.weight
        self.register_buffer("codebook", book.to(device=ref.device, dtype=ref.dtype), persistent=False)
        self.codebook_bound = True
        return self

    @property
    def code_vectors(self) -> torch.Tensor:
        """(V, C): the l2-normalised codebook the student's noise and tokens live in."""
        return self._book()

    def _book(self) -> torch.Tensor:
        if not self.codebook_bound:
            raise ConfigError("this DD student has no codebook: call bind_tokenizer(vq_tokenizer) (or load it with "
                              "load_dd_llamagen(..., tokenizer=vq))")
        return self.codebook

    # -- protocol attributes -------------------------------------------------------------------
    @property
    def token_dim(self) -> int:
        return self.config.codebook_dim

    @property
    def num_t(self) -> int:
        return self.config.block_size

    @property
    def default_split(self) -> int:
        return self.config.split_t

    def default_t_list(self, steps: int) -> list[int]:
        return released_t_list(steps, self.config.two_step_t, self.num_t)

    def new_cache(self, *args: Any, **kwargs: Any):
        raise ConfigError("the DD student has no KV-cache path: it predicts whole sequences (final_predict)")

    # -- forward passes --------------------------------------------------------------------------
    def _steps(self, t: torch.Tensor | float, batch: int) -> torch.Tensor:
        """Step positions as a (B,) float tensor on the model's device, checked against 0..num_t-1."""
        t = torch.as_tensor(t, dtype=torch.float32, device=self.tok_embeddings.weight.device)
        t = t.expand(batch) if t.dim() == 0 else t
        if t.shape != (batch,):
            raise ConfigError(f"t must be a number or one per sample ({batch},), got shape {tuple(t.shape)}")
        if bool(((t < 0) | (t > self.num_t - 1) | (t != t.floor())).any()):
            raise ConfigError(f"step positions t must be integers in 0..{self.num_t - 1}, got {t.tolist()}")
        return t

    def forward(self, x: torch.Tensor, labels: torch.Tensor,
                t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, N, C) (clean vectors before t, noise from t on), labels (B,), t (B,) ->
        (continuous tokens (B, N, C), logits (B, N, V)); output j belongs to input j."""
        b, n, _ = x.shape
        t = self._steps(t, b)
        if n + self.prefix_len > self.rope.shape[0]:
            raise ConfigError(f"sequence of {n} tokens exceeds the model's {self.seq_len}")
        cond = self.embed_condition(labels)  # (B, 1, dim)
        h = torch.cat([cond, self.tok_embeddings(x)], dim=1)
        clean = torch.arange(n + 1, device=h.device)[None] <= t[:, None]  # class token + tokens 0..t-1
        h = self.tok_dropout(h + self.n_d_embed(clean.long()))
        h = self._blocks(h, self.rope[: n + 1].unsqueeze(0))
        logits = self.output(self.norm(h[:, 1:])).float()
        return self.final_layer_conti(h[:, 1:], cond[:, 0]), logits

    def first_noisy(self, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t).long()

    def perturb(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t = self._steps(t, x.shape[0])
        noisy = torch.arange(x.shape[1], device=x.device)[None] >= self.first_noisy(t)[:, None]
        return torch.where(noisy[..., None], noise, x)

    def nearest_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest codebook ids of vectors (..., C): argmin of the sum of squared differences (the official
        ``gt_idx``), in chunks that bound the (V, rows, C) difference tensor."""
        book = self._book()
        flat = x.reshape(-1, x.shape[-1])
        step = max(1, (1 << 24) // max(book.numel(), 1))
        ids = [(book[:, None, :] - flat[i : i + step]).square().sum(-1).argmin(0) for i in range(0, len(flat), step)]
        return torch.cat(ids).view(x.shape[:-1]) if ids else flat.new_zeros(x.shape[:-1], dtype=torch.long)

    def final_predict(self, x_t: torch.Tensor, labels: torch.Tensor,
                      t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass; positions before t pass through: tokens = x_t, logits 0 at the nearest code, -inf elsewhere."""
        t = self._steps(t, x_t.shape[0])
        tokens, logits = self(x_t, labels, t)
        kept = torch.arange(x_t.shape[1], device=x_t.device)[None] < self.first_noisy(t)[:, None]  # (B, N)
        hot = torch.full((int(kept.sum()), logits.shape[-1]), float("-inf"), dtype=logits.dtype, device=logits.device)
        hot.scatter_(1, self.nearest_codes(x_t[kept])[:, None], 0.0)
        logits = logits.masked_scatter(kept[..., None], hot)
        return torch.where(kept[..., None], x_t, tokens), logits

    def final_sequence(self, tokens: torch.Tensor, logits: torch.Tensor, split: int) -> torch.Tensor:
        """Positions < split -> codebook[argmax(logits)]; the others keep the continuous tokens."""
        snapped = self._book()[logits.argmax(-1)].to(tokens.dtype)
        before = torch.arange(tokens.shape[1], device=tokens.device) < split
        return torch.where(before[None, :, None], snapped, tokens)
