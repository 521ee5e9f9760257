"""What a sampler may call on a generator, one protocol per generator kind.

A generator declares its kind (``kind = "token"``, ...); the kind names the protocol below that it
implements, and samplers register per kind (:func:`argen.samplers.register_sampler`). A sampler calls
nothing on a model but its kind's protocol, so a new generator works with every sampler of its kind,
and a new sampler (a draft model for CSpD, a teacher for DD) reaches its second model the same way.
:func:`check_generator_class` holds a class to its kind's protocol when its family registers.

Words, each with one meaning:

* ``decode`` (token-wise generators): one KV-cache step, a window of tokens after each row's cached
  length -> logits; ``prefill`` is the first step, the condition. The tokenizer's ``decode`` is the
  other meaning, codes -> images (:mod:`argen.tokenizers.protocol`); nothing else is called decode
  (FlowAR's transformer halves are ``run_encoder`` / ``run_decoder``).
* ``step`` (scale-wise generators): one scale against the cached coarser ones.
* ``forward``: the training pass, the only one a distributed (DDP) wrapper sees. Token- and scale-wise
  generators return teacher-forced logits (B, N, V), the loss being their cross-entropy
  (:func:`argen.families.registry.next_token_loss`). Continuous and flow-scale generators return the
  training loss itself: their teacher-forced outputs exist only inside it, for a random mask (MAR) or
  random times and noise (FlowAR) drawn from ``generator``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterator, Protocol

import torch

from argen.errors import ConfigError
from argen.nn.kv_cache import KVCache


class Generator(Protocol):
    """What every generator offers: its kind, its sequence, and checked conditions."""

    kind: ClassVar[str]
    # the model's own sampling conventions ({"cfg_schedule": ..., "top_p_rule": ...}; {} = the defaults)
    sampling_conventions: ClassVar[dict[str, str]]

    @property
    def seq_len(self) -> int: ...  # tokens (scale-wise: all scales' tokens) per image

    @property
    def num_classes(self) -> int: ...

    def check_condition(self, cond: Any, allow_null: bool = False) -> torch.Tensor:
        """Class ids (B,) on the model's device, ConfigError for ids out of range."""

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...


class TokenCache(Protocol):
    """The cache a token-wise sampler holds: per-row lengths it can move back (rejected drafts) and
    rows it can drop (finished samples, the unconditional half after guidance)."""

    @property
    def lengths(self) -> torch.Tensor: ...  # (B,) int64

    def truncate(self, lengths: torch.Tensor | int) -> None: ...

    def select(self, rows: torch.Tensor) -> None: ...


class TokenDecoder(Protocol):
    """What a token-wise sampler steps: the generator itself, or its compiled decoder."""

    def new_cache(self, batch_size: int, max_len: int | None = None) -> TokenCache: ...

    def prefill(self, cond: torch.Tensor, cache: Any) -> torch.Tensor:
        """Condition (B,) -> logits (B, V) of the first token; the condition enters the cache."""

    def decode(self, tokens: torch.Tensor, cache: Any) -> torch.Tensor:
        """Tokens (B, W) after each row's cached length -> logits (B, W, V); they enter the cache."""


class TokenGenerator(Generator, TokenDecoder, Protocol):
    """Next-token prediction over a raster of discrete codes: VQ codes (LlamaGen), palette pixels
    (image-GPT) or a binary autoencoder's sub-tokens (ELM); samplers ar, sjd, flow.

    ``token_shape`` is what one raster position holds: ``()`` for one code, ``(G,)`` for G sub-tokens
    predicted at once from one hidden state by G heads (ELM's split vocabulary). Tokens are then
    (B, W, *token_shape) and logits (B, W, *token_shape, V); a position's probability is the product of
    its heads' (they are drawn independently), which is how every sampler treats it."""

    token_shape: tuple[int, ...]

    @property
    def vocab_size(self) -> int: ...  # of one head (a sub-vocabulary where token_shape is (G,))

    @property
    def prefix_len(self) -> int: ...  # cache entries the condition takes

    @property
    def token_grid(self) -> tuple[int, int]: ...  # (rows, columns) of the raster

    @property
    def code_vectors(self) -> torch.Tensor: ...  # (V, C): each code's vector in the tokenizer (the flow sampler's)

    def null_condition(self, batch_size: int) -> torch.Tensor: ...

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache: ...

    def decode_at(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Tokens (B, W) at explicit positions (B, W), attending over the whole cache through a
        position mask: fixed shapes for a compiled step. The caller moves the lengths."""


class ScaleGenerator(Generator, Protocol):
    """Next-scale prediction over a multi-scale VQ-VAE's codes (VAR; sampler ar)."""

    @property
    def patch_nums(self) -> list[int]: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def code_vectors(self) -> torch.Tensor: ...  # (V, C): the codebook the scales' codes index

    def null_condition(self, batch_size: int) -> torch.Tensor: ...

    def new_cache(self, batch_size: int) -> KVCache: ...

    def condition(self, labels: torch.Tensor) -> Any:
        """Class ids (B,) -> the per-pass conditioning every ``step`` takes."""

    def first_scale_input(self, cond: Any) -> torch.Tensor: ...

    def step(self, x: torch.Tensor, cond: Any, cache: KVCache) -> torch.Tensor:
        """One scale's input tokens (B, n, C) -> logits (B, n, V); they enter the cache."""

    def add_scale(self, si: int, f_hat: torch.Tensor | None, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale ``si``'s codes (ids, or code vectors (B, C, pn, pn)) added to the running latent
        -> (latent, the next scale's input features)."""

    def scale_input(self, features: torch.Tensor, si: int) -> torch.Tensor: ...


class ContinuousGenerator(Generator, Protocol):
    """Masked generation of continuous tokens with a per-token diffusion head (MAR; samplers ar, cspd)."""

    @property
    def token_dim(self) -> int: ...

    @property
    def sampling_steps(self) -> int: ...  # the head's default reverse steps

    def class_embedding(self, labels: torch.Tensor | None, batch_size: int | None = None) -> torch.Tensor:
        """(B, D); ``labels`` None: the unconditional rows."""

    def random_orders(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def conditions(self, tokens: torch.Tensor, mask: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L, C) with ``mask`` (B, L) True where unknown -> per-token conditions (B, L, D).
        Rows may mask different numbers of tokens (one pass over several steps' contexts)."""

    def sample_tokens(self, z: torch.Tensor, temperature: float, cfg: float | torch.Tensor | None,
                      generator: torch.Generator | None, steps: int, final_noise: bool = False) -> torch.Tensor:
        """One token per condition z (N, D) (cfg: z is [cond ; uncond]; one scale or one per token)
        through the head's reverse chain; ``final_noise``: the last step draws instead of taking its mean."""

    def step_gaussian(self, x_t: torch.Tensor, i: int, z: torch.Tensor, cfg: float | torch.Tensor | None,
                      steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance of the head's reverse step ``i`` of ``steps`` (cfg as in
        ``sample_tokens``): the density a speculative sampler evaluates."""


class FlowScaleGenerator(Generator, Protocol):
    """Scale-wise flow matching on continuous latents (FlowAR; sampler ar)."""

    @property
    def scales(self) -> list[int]: ...

    @property
    def token_dim(self) -> int: ...

    def null_condition(self, batch_size: int) -> torch.Tensor: ...

    def class_embedding(self, labels: torch.Tensor) -> torch.Tensor: ...

    def new_cache(self, batch_size: int) -> Any: ...

    def step(self, tokens: torch.Tensor | None, ada: torch.Tensor, cache: Any) -> torch.Tensor:
        """The next scale's conditions z (B, s^2, D) (``tokens`` None for the first scale)."""

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor: ...

    def next_scale_tokens(self, latents: torch.Tensor, k: int, upsample: int | None = None) -> torch.Tensor: ...


class DistilledGenerator(Generator, Protocol):
    """A distilled student (DD, arXiv 2412.17153; sampler dd): Gaussian noise, one vector per token in
    the tokenizer's embedding space, to the whole sequence in one pass per step. A step at ``t`` keeps
    the first :meth:`first_noisy` (t) positions of the running sequence, resets the rest to the run's
    noise and predicts them all at once (LlamaGen-DD: t counts tokens; VAR-DD: scales)."""

    @property
    def token_dim(self) -> int: ...  # C of the (B, N, C) noise and tokens

    @property
    def num_t(self) -> int: ...  # valid step positions t are 0 .. num_t - 1

    @property
    def default_split(self) -> int: ...  # the released split point (official loss_split_t / split_t)

    def default_t_list(self, steps: int) -> list[int]:
        """The released step positions for a 1- or 2-step run."""

    def first_noisy(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) step positions -> (B,) index of the first position reset to noise."""

    def perturb(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x (B, N, C) with every position from ``first_noisy(t)`` on set back to ``noise``."""

    def final_predict(self, x_t: torch.Tensor, labels: torch.Tensor,
                      t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One student pass -> (tokens (B, N, C), logits (B, N, V)); positions before ``first_noisy(t)``
        pass through (their logits one-hot at the input's nearest code)."""

    def final_sequence(self, tokens: torch.Tensor, logits: torch.Tensor, split: int) -> torch.Tensor:
        """Positions before the split become the argmax codes' vectors, the rest keep the continuous tokens."""

    @property
    def code_vectors(self) -> torch.Tensor: ...  # (V, C): the codebook the noise and tokens live in

    def nearest_codes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) vectors -> (B, N) ids of the nearest codes (squared L2)."""


class MaskedGenerator(Generator, Protocol):
    """Masked-token prediction over a raster of discrete codes: every position predicted at once from the
    known ones, bidirectionally (ELM's MLM, MaskGIT-style models); sampler mask.

    ``token_shape`` as for :class:`TokenGenerator`: ``()`` for one code per position, ``(G,)`` for G
    sub-tokens, predicted independently of each other given the context."""

    token_shape: tuple[int, ...]

    @property
    def vocab_size(self) -> int: ...  # of one sub-token

    @property
    def token_grid(self) -> tuple[int, int]: ...  # (rows, columns) of the raster

    def null_condition(self, batch_size: int) -> torch.Tensor: ...

    def masked_logits(self, tokens: torch.Tensor, masked: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, *token_shape) with ``masked`` (B, N) True where unknown (their values are ignored)
        and conditions (B,) (or ``null_condition`` rows) -> float32 logits (B, N, *token_shape, V) of every
        position given the known ones."""


PROTOCOLS: dict[str, type] = {
    "token": TokenGenerator,
    "scale": ScaleGenerator,
    "continuous": ContinuousGenerator,
    "flow-scale": FlowScaleGenerator,
    "distilled": DistilledGenerator,
    "masked": MaskedGenerator,
}


def protocol_members(protocol: type) -> list[str]:
    """The names a protocol declares (its own and its bases'), sorted."""
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls in (Protocol, object) or not getattr(cls, "_is_protocol", False):
            continue
        names |= {n for n in vars(cls) if not n.startswith("_")} | set(getattr(cls, "__annotations__", {}))
    return sorted(names)


def missing_members(obj: Any, protocol: type) -> list[str]:
    """What ``obj`` (a class or an instance) lacks of ``protocol``. A property the class defines counts
    without being evaluated (ELM's ``code_vectors`` raises: its sub-tokens have none)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return [n for n in protocol_members(protocol) if not (hasattr(cls, n) or hasattr(obj, n))]


def protocol_for(kind: str) -> type:
    if kind not in PROTOCOLS:
        raise ConfigError(f"unknown generator kind {kind!r}; kinds (argen.generators.protocol): {', '.join(PROTOCOLS)}")
    return PROTOCOLS[kind]


def check_generator_class(cls: type) -> None:
    """ConfigError unless ``cls`` declares a known kind and has every member of that kind's protocol."""
    kind = getattr(cls, "kind", None)
    missing = missing_members(cls, protocol_for(kind))
    if missing:
        raise ConfigError(f"{cls.__name__} declares kind {kind!r} but lacks {', '.join(missing)} of the "
                          f"{protocol_for(kind).__name__} protocol (argen.generators.protocol)")


def generator_kind(model: Any) -> str:
    """A generator's kind; ConfigError for an object that is not a generator."""
    kind = getattr(model, "kind", None)
    if kind not in PROTOCOLS:
        raise ConfigError(f"{type(model).__name__} is not an argen generator (its kind is {kind!r}; "
                          f"kinds: {', '.join(PROTOCOLS)})")
    return kind
