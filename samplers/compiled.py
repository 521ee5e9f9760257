"""The opt-in compiled decode step of the token-wise samplers (``sample(..., compile=True)``).

What is compiled: one forward pass of the generator over a window of W tokens written at explicit
cache positions, attending over the whole static KV cache through a position mask
(``model.decode_at``), so that every step has the same shapes. ``torch.compile(dynamic=False,
fullgraph=True)``; on CUDA with ``mode="reduce-overhead"`` (CUDA graphs: one replay per step), the
recipe of gpt-fast and LlamaGen's vLLM port.

What is not: the prefill (once per generation), the logit processing and every random draw (so a
seeded run draws from the same stream as eager decoding and gives the same tokens), and the
sampler's bookkeeping (positions, lengths, which rows still run).

Fixed shapes and fixed addresses, so that one graph serves every step and every later generation:

* rows a sampler drops (the unconditional CFG half once ``cfg_interval`` has ended, SJD's finished
  samples) are *parked*, not removed: they stay in the batch with dummy inputs and unused outputs
  (:class:`ParkedCache`); one graph per (model shapes, rows, window) whatever happens to the rows;
* caches are pooled per (rows, length, dtype, device) and reused by the next generation (CUDA graphs
  read and write the cache at the addresses they were recorded with).

Compiled graphs live in torch's own cache (guarded on the shapes): a second generation with the same
model, batch and window does not compile again. The pool holds its caches until the model is freed or
:func:`release` is called.
"""
from __future__ import annotations

import sys
import weakref
from typing import Any, Callable

import torch

from argen.errors import ConfigError
from argen.generators.protocol import TokenDecoder, TokenGenerator, generator_kind
from argen.nn import KVCache

RECOMPILE_LIMIT = 64  # graphs per process for the decode step (torch's default, 8, is a handful of shapes)

_DECODERS: "weakref.WeakKeyDictionary[torch.nn.Module, CompiledDecoder]" = weakref.WeakKeyDictionary()
_STEPS: dict[str, Callable] = {}  # torch.compile mode -> the compiled step


def _decode_step(model: TokenGenerator, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
    return model.decode_at(tokens, positions, cache)


def check_compile_available(device: torch.device) -> None:
    """Raise a one-line ConfigError naming why ``torch.compile`` cannot run here (before any tracing)."""
    from torch._dynamo.eval_frame import is_dynamo_supported

    if not is_dynamo_supported():
        raise ConfigError(
            f"compile=True needs torch.compile, which torch {torch.__version__} does not support on "
            f"Python {sys.version.split()[0]} / {sys.platform}; run without compile"
        )
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError("compile=True on CUDA needs triton (pip install triton); run without compile")
    elif device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception as exc:  # InvalidCxxCompiler, or a broken compiler
            raise ConfigError(
                f"compile=True on the CPU needs a C++ compiler for torch.compile (none usable: "
                f"{type(exc).__name__}); install g++ or set CXX, or run without compile"
            ) from None


def _compiled_step(mode: str) -> Callable:
    if mode not in _STEPS:
        import torch._dynamo

        cfg = torch._dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, RECOMPILE_LIMIT)
        kwargs: dict[str, Any] = {"dynamic": False, "fullgraph": True}
        if mode != "default":
            kwargs["mode"] = mode
        _STEPS[mode] = torch.compile(_decode_step, **kwargs)
    return _STEPS[mode]


class ParkedCache:
    """A sampler's view of a pooled :class:`KVCache`: ``select`` parks the rows it drops instead of
    removing them, so the compiled step keeps its batch shape. ``lengths``, ``truncate`` and
    ``select`` speak of the live rows only, as on a plain cache."""

    def __init__(self, base: KVCache) -> None:
        self.base = base
        self.rows: torch.Tensor | None = None  # live rows of ``base`` in order; None = all

    @property
    def lengths(self) -> torch.Tensor:
        return self.base.lengths if self.rows is None else self.base.lengths[self.rows]

    @property
    def batch_size(self) -> int:
        return self.base.batch_size if self.rows is None else self.rows.shape[0]

    @property
    def max_len(self) -> int:
        return self.base.max_len

    def truncate(self, lengths: torch.Tensor | int) -> None:
        if self.rows is None:
            self.base.truncate(lengths)
            return
        full = self.base.lengths.clone()
        full[self.rows] = torch.as_tensor(lengths, dtype=torch.long, device=full.device).expand(self.rows.shape)
        self.base.truncate(full)

    def select(self, rows: torch.Tensor) -> None:
        self.rows = rows if self.rows is None else self.rows[rows]


class CompiledDecoder:
    """``new_cache`` / ``prefill`` / ``decode`` with the generator's contract, the decode compiled.
    One per model (:func:`compiled_decoder`); a sampler uses it in place of the model."""

    def __init__(self, model: TokenGenerator) -> None:
        kind = generator_kind(model)
        if kind != "token":
            raise ConfigError(f"compile=True compiles the fixed-shape decode step of token-wise generators "
                              f"(decode_at); {type(model).__name__} is {kind!r}-wise")
        self._model = weakref.ref(model)
        self._checked: set[str] = set()  # device types torch.compile is known to work on
        self._pool: dict[tuple, KVCache] = {}
        self._lent: dict[tuple, weakref.ref] = {}
        self._check(next(model.parameters()).device)

    def _check(self, device: torch.device) -> None:
        if device.type not in self._checked:
            check_compile_available(device)
            self._checked.add(device.type)

    @property
    def model(self) -> torch.nn.Module:
        model = self._model()
        if model is None:
            raise ConfigError("the model of this compiled decoder has been freed")
        return model

    def new_cache(self, batch_size: int, max_len: int | None = None) -> ParkedCache:
        """A cleared pooled cache (a fresh one while the pooled one is still in use elsewhere)."""
        model = self.model
        w = next(model.parameters())
        self._check(w.device)  # the model may have moved since
        key = (batch_size, max_len, w.dtype, w.device)
        lent = self._lent.get(key)
        if key in self._pool and (lent is None or lent() is None):
            base = self._pool[key]
            base.reset()  # stale entries stay in the buffers, masked out by position
        else:
            base = model.new_cache(batch_size, max_len)
            if w.device.type == "cuda":  # CUDA graphs write the cache at its recorded address
                import torch._dynamo

                for t in (*base.k, *base.v):
                    torch._dynamo.mark_static_address(t, guard=False)
            self._pool.setdefault(key, base)
        view = ParkedCache(base)
        if self._pool[key] is base:
            self._lent[key] = weakref.ref(view)
        return view

    def prefill(self, cond: torch.Tensor, cache: ParkedCache) -> torch.Tensor:
        """The eager prefill (once per generation, its length set by the condition)."""
        return self.model.prefill(cond, cache.base)

    def decode(self, tokens: torch.Tensor, cache: ParkedCache) -> torch.Tensor:
        """As ``model.decode``: append tokens (B, W, *token_shape) after each live row's length -> logits."""
        base, rows = cache.base, cache.rows
        width = tokens.shape[1]
        positions = base.next_positions(width, rows)  # checks the room
        if rows is not None:  # parked rows: token 0 at positions 0..W-1 of their own (finished) rows
            full = base.batch_size
            tokens = tokens.new_zeros(full, *tokens.shape[1:]).index_copy_(0, rows, tokens)
            positions = torch.arange(width, device=positions.device).repeat(full, 1).index_copy_(0, rows, positions)
        cuda_graphs = tokens.device.type == "cuda"
        step = _compiled_step("reduce-overhead" if cuda_graphs else "default")
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        from torch._dynamo.exc import BackendCompilerFailed

        try:
            logits = step(self.model, tokens.contiguous(), positions.contiguous(), base)
        except BackendCompilerFailed as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"torch.compile failed for the decode step ({first}); run without compile") from exc
        base.advance(width, rows)
        if rows is not None:
            return logits[rows]
        # a CUDA graph's output buffer is overwritten by the next replay: hand out a copy
        return logits.clone() if cuda_graphs else logits

    def release(self) -> None:
        """Drop the pooled caches (their memory is freed once no sampler holds them)."""
        self._pool.clear()
        self._lent.clear()


def decoder_for(model: TokenGenerator, compile: bool) -> TokenDecoder:
    """What a token-wise sampler calls ``new_cache`` / ``prefill`` / ``decode`` on: the model itself,
    or (``compile=True``) its compiled decoder."""
    if not isinstance(compile, bool):
        raise ConfigError(f"compile must be true or false, got {compile!r}")
    return compiled_decoder(model) if compile else model


def compiled_decoder(model: torch.nn.Module) -> CompiledDecoder:
    """The model's compiled decoder (made on first use, kept while the model lives)."""
    dec = _DECODERS.get(model)
    if dec is None:
        dec = _DECODERS[model] = CompiledDecoder(model)
    return dec


def release(model: torch.nn.Module) -> None:
    """Free the pooled caches of ``model``'s compiled decoder (compiled graphs stay in torch's cache)."""
    dec = _DECODERS.pop(model, None)
    if dec is not None:
        dec.release()
