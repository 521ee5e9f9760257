"""ELM's autoregressive LM (Liu et al. 2024, "Elucidating the Design Space of Language Models for Image
Generation", arXiv 2410.16257): LlamaGen's blocks over a binary autoencoder's bits, cut into sub-tokens.

Each latent position holds K = token_each x code_dim bits, read as ``token_each`` sub-tokens of
``code_dim`` bits (:mod:`argen.tokenizers.binary`). The deltas to :class:`LlamaGen` are only the ends:
one embedding table per sub-token, concatenated and projected back to ``dim`` (``proj``, when
token_each > 1), and one head per sub-token on the same final hidden state. A position's sub-tokens are
drawn independently from their heads (the official ``generate_cfg``), so the model's ``token_shape`` is
(token_each,) and the samplers treat a position's probability as the product of its heads'.

Key names are the official ``llama/ar_model.py``'s (``tok_embedder[.g]``, ``proj``, ``output[.g]``), so
the released ``gpt/*.pth`` files load strictly (:func:`argen.convert.elm.load_elm`).

    model = ELM(ELMConfig.preset("L", token_each=2, code_dim=12))
    logits = model(tokens, classes)       # tokens (B, N, 2) -> (B, N, 2, 4096), [:, i] predicts tokens[:, i]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from argen.errors import ConfigError
from argen.generators.llamagen import LlamaGen, LlamaGenConfig
from argen.modeling import build_config, register
from argen.nn import Linear

# the official GPT_models sizes (B exists but is not released)
PRESETS: dict[str, dict[str, int]] = {
    "B": dict(n_layer=12, n_head=12, dim=768),
    "L": dict(n_layer=24, n_head=16, dim=1024),
    "XL": dict(n_layer=36, n_head=20, dim=1280),
    "XXL": dict(n_layer=48, n_head=24, dim=1536),
    "2B": dict(n_layer=48, n_head=28, dim=1792),
}


@dataclass
class ELMConfig(LlamaGenConfig):
    """The official ``ModelArgs``: LlamaGen's plus the split. ``vocab_size`` is one head's vocabulary,
    2 ** code_dim (0 = derived; the official argument is ignored by its model)."""

    vocab_size: int = 0
    token_each: int = 1
    code_dim: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.token_each, bool) or not isinstance(self.token_each, int) or self.token_each < 1:
            raise ConfigError(f"token_each must be an integer >= 1, got {self.token_each!r}")
        if isinstance(self.code_dim, bool) or not isinstance(self.code_dim, int) or not 1 <= self.code_dim <= 24:
            raise ConfigError(f"code_dim must be an integer in [1, 24] (bits per sub-token), got {self.code_dim!r}")
        if self.vocab_size == 0:
            self.vocab_size = 2**self.code_dim
        elif self.vocab_size != 2**self.code_dim:
            raise ConfigError(f"an ELM head's vocabulary is 2 ** code_dim = {2**self.code_dim}, got vocab_size "
                              f"{self.vocab_size} (leave it out)")
        if self.model_type != "c2i":
            raise ConfigError("ELM models are class-conditional (model_type 'c2i')")
        super().__post_init__()

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "ELMConfig":
        return build_config(cls, PRESETS, name, overrides, "ELM")

    @property
    def bits(self) -> int:
        return self.token_each * self.code_dim


@register("elm")
class ELM(LlamaGen):
    """Token-wise generator whose tokens are (token_each,) sub-tokens per position."""

    config_class = ELMConfig
    # the official ramps read r = (step + 1) / steps (argen.samplers.logits)
    sampling_conventions = {"cfg_progress": "elm"}

    def build_token_io(self) -> None:
        c = self.config
        if c.token_each == 1:
            self.tok_embedder = nn.Embedding(c.vocab_size, c.dim)
            self.output = Linear(c.dim, c.vocab_size, bias=False)
        else:
            self.tok_embedder = nn.ModuleList(nn.Embedding(c.vocab_size, c.dim) for _ in range(c.token_each))
            self.proj = Linear(c.token_each * c.dim, c.dim, bias=False)
            self.output = nn.ModuleList(Linear(c.dim, c.vocab_size, bias=False) for _ in range(c.token_each))

    @property
    def token_shape(self) -> tuple[int, ...]:
        return (self.config.token_each,)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.config.token_each == 1:
            return self.tok_embedder(tokens[..., 0])
        return self.proj(torch.cat([emb(tokens[..., g]) for g, emb in enumerate(self.tok_embedder)], dim=-1))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if self.config.token_each == 1:
            return self.output(h).float().unsqueeze(-2)
        return torch.stack([out(h).float() for out in self.output], dim=-2)

    def init_weights(self) -> None:
        """The official initialisation: N(0, 0.02) for Linear/Embedding weights, zero output heads."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
        for out in self.output.modules():
            if isinstance(out, nn.Linear):
                nn.init.zeros_(out.weight)

    def check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sub-token ids (B, N, token_each) in [0, 2 ** code_dim); a one-line ConfigError otherwise."""
        c = self.config
        if tokens.dim() != 3 or tokens.shape[-1] != c.token_each or tokens.is_floating_point():
            raise ConfigError(f"ELM tokens are integer sub-token ids (B, N, {c.token_each}), got "
                              f"{tuple(tokens.shape)} {tokens.dtype}")
        if bool(((tokens < 0) | (tokens >= c.vocab_size)).any()):  # one device sync per training step
            raise ConfigError(f"sub-token ids must lie in [0, {c.vocab_size}) (code_dim {c.code_dim}), got "
                              f"[{int(tokens.min())}, {int(tokens.max())}]")
        return tokens

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, *, include_last: bool = False) -> torch.Tensor:
        """Teacher forcing: tokens (B, N, token_each) -> logits (B, N, token_each, V) (``include_last``: N + 1
        rows); row i predicts every sub-token of position i from the class and positions < i."""
        return super().forward(self.check_tokens(tokens), cond, include_last=include_last)

    def bind_tokenizer(self, tokenizer: Any) -> "ELM":
        """Check that the binary autoencoder's bits and split are the ones this LM reads."""
        c = self.config
        bits = getattr(tokenizer, "bits", None)
        if bits is None:
            raise ConfigError(f"an ELM model reads a binary autoencoder's bits; got a {type(tokenizer).__name__}")
        if bits != c.bits:
            raise ConfigError(f"the binary autoencoder has {bits} bits per position, this ELM reads token_each x "
                              f"code_dim = {c.token_each} x {c.code_dim} = {c.bits}: pair it with a {c.bits}-bit BAE")
        if tokenizer.token_each != c.token_each:
            raise ConfigError(f"the binary autoencoder splits its {bits} bits into {tokenizer.token_each} "
                              f"sub-tokens, this ELM reads {c.token_each} of {c.code_dim} bits")
        self._tokenizer = (tokenizer,)
        return self

    @property
    def code_vectors(self) -> torch.Tensor:
        raise ConfigError("ELM's sub-tokens are bit groups with no code vectors: the flow sampler does not apply "
                          "(use ar or sjd)")
