"""What a tokenizer offers, one protocol per tokenizer kind.

Images are float tensors in [-1, 1], NCHW. ``encode`` maps images to codes and ``decode`` codes to
images; that is the only meaning of encode/decode on a tokenizer (a token-wise generator's ``decode``
is its KV-cache step: :mod:`argen.generators.protocol`). A family names the kind of tokenizer it
models (``Family.tokenizer_kind``), and the contract tests hold every family's tokenizer to it.
"""
from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch

from argen.errors import ConfigError


class Tokenizer(Protocol):
    kind: ClassVar[str]

    @property
    def downsample(self) -> int: ...  # image pixels per latent cell, per side

    def latent_grid(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the latent grid for an image size; ConfigError when it does not divide."""

    def encode(self, images: torch.Tensor) -> Any: ...

    def decode(self, codes: Any) -> torch.Tensor: ...


class DiscreteTokenizer(Tokenizer, Protocol):
    """Codes (B, h, w) int64 in [0, codebook_size) (LlamaGen's VQ)."""

    @property
    def codebook_size(self) -> int: ...

    @property
    def code_vectors(self) -> torch.Tensor: ...  # (V, C): the vector each code decodes from


class MultiScaleTokenizer(Tokenizer, Protocol):
    """Codes per scale of ``patch_nums``, flat in scale order for the generators (VAR's VQ-VAE)."""

    @property
    def codebook_size(self) -> int: ...

    @property
    def patch_nums(self) -> list[int]: ...

    def flatten_codes(self, codes: Any) -> torch.Tensor: ...

    def split_codes(self, flat: torch.Tensor) -> list[torch.Tensor]: ...


class ContinuousTokenizer(Tokenizer, Protocol):
    """Scaled latents (B, latent_channels, h, w); ``encode(images, sample=True, generator=g)`` draws
    from the posterior instead of taking its mean (KL VAE, diffusers AutoencoderKL)."""

    @property
    def latent_channels(self) -> int: ...

    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor: ...


class PixelTokenizer(DiscreteTokenizer, Protocol):
    """One code per pixel (``downsample`` 1): a colour palette's ids (B, H, W) (image-GPT); its
    ``code_vectors`` are the colours (K, 3) in [-1, 1]."""


class BitTokenizer(Tokenizer, Protocol):
    """K bits per latent cell (ELM's binary autoencoder), read as ``token_each`` sub-tokens of
    ``code_dim`` bits each, most significant bit first: codes (B, h, w, token_each) int64 in
    [0, 2 ** code_dim). ``encode(images, sample=True, generator=g)`` draws the bits from their
    Bernoulli probabilities instead of thresholding them at 0.5."""

    @property
    def bits(self) -> int: ...  # K = token_each * code_dim

    @property
    def token_each(self) -> int: ...

    @property
    def code_dim(self) -> int: ...

    @property
    def codebook_size(self) -> int: ...  # 2 ** code_dim: one sub-token's vocabulary

    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor: ...


TOKENIZER_PROTOCOLS: dict[str, type] = {
    "discrete": DiscreteTokenizer,
    "pixels": PixelTokenizer,
    "multiscale": MultiScaleTokenizer,
    "continuous": ContinuousTokenizer,
    "bits": BitTokenizer,
}


def tokenizer_protocol(kind: str) -> type:
    if kind not in TOKENIZER_PROTOCOLS:
        raise ConfigError(f"unknown tokenizer kind {kind!r}; kinds (argen.tokenizers.protocol): "
                          f"{', '.join(TOKENIZER_PROTOCOLS)}")
    return TOKENIZER_PROTOCOLS[kind]
