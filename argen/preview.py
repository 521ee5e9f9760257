"""Live previews while a model samples.

Samplers report partial results through ``callback(n_done, codes_so_far)``. This module turns
those partial codes into images (:func:`decode_partial`). It also runs a generation in a worker
thread, so a caller can iterate over previews and then the final images
(:func:`generate_stream`). The Gradio demo uses it, and so can any other front end.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from argen.images import to_pil
from argen.pipeline import ARPipeline

log = logging.getLogger(__name__)


class GenerationCancelled(Exception):
    """Raised inside the sampler's callback once the consumer of a stream has gone away."""


@dataclass
class Preview:
    """Images decoded from the codes sampled so far (``step``: tokens, scales or iterations done)."""

    step: int
    images: list[Image.Image]


@dataclass
class Finished:
    """The final images and the sampler's statistics (``preview_s``: time spent decoding previews)."""

    images: list[Image.Image]
    stats: dict[str, Any]
    preview_s: float = 0.0
    previews: int = 0
    codes: torch.Tensor | None = field(default=None, repr=False)


@torch.inference_mode()
def decode_partial(pipe: ARPipeline, n_done: int, codes: torch.Tensor) -> torch.Tensor | None:
    """Decode a sampler's partial codes into preview images (B, 3, H, W) in [-1, 1].

    Returns None when this kind of model has no cheap preview. Token-wise: the missing tokens
    repeat the last one and are greyed out. Scale-wise VQ: the scales done so far. MAR: the tokens
    done (unknown ones are 0). FlowAR: the current scale, upsampled to the final grid.
    """
    kind = getattr(pipe.generator, "kind", None)
    if kind == "token" and pipe.tokenizer.kind == "discrete":
        return _token_preview(pipe, codes)
    if kind == "scale" and pipe.tokenizer.kind == "multiscale":
        return _scale_preview(pipe, codes)
    if kind == "continuous":
        return pipe.decode(codes.to(_tokenizer_dtype(pipe)))
    if kind == "flow-scale":
        return pipe.decode(_upsample_tokens(codes, pipe.generator.latent_grid[0]).to(_tokenizer_dtype(pipe)))
    return None


def _tokenizer_dtype(pipe: ARPipeline) -> torch.dtype:
    return next(pipe.tokenizer.parameters()).dtype


def _token_preview(pipe: ARPipeline, codes: torch.Tensor) -> torch.Tensor:
    h, w = pipe.generator.token_grid
    b, done = codes.shape
    full = codes.new_zeros(b, h * w)
    full[:, :done] = codes
    if 0 < done < h * w:
        full[:, done:] = codes[:, done - 1 : done]  # repeat the last token: fewer artefacts than code 0
    images = pipe.decode(full)
    known = (torch.arange(h * w, device=images.device) < done).view(1, 1, h, w).to(images.dtype)
    return images * F.interpolate(known, size=images.shape[-2:], mode="nearest")  # 0 is mid-grey


def _scale_preview(pipe: ARPipeline, codes: torch.Tensor) -> torch.Tensor | None:
    tok = pipe.tokenizer
    quant, dev = tok.quantize, pipe.tokenizer_device
    f_hat, offset = None, 0
    for si, pn in enumerate(tok.patch_nums):
        if offset + pn * pn > codes.shape[1]:
            break
        ids = codes[:, offset : offset + pn * pn].reshape(-1, pn, pn).to(dev)
        contrib = quant.upsample_scale(quant.lookup(ids, pn), si)
        f_hat = contrib if f_hat is None else f_hat + contrib
        offset += pn * pn
    return None if f_hat is None else tok.decode_latents(f_hat).clamp(-1, 1)


def _upsample_tokens(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(B, s*s, C) tokens of one scale -> (B, side*side, C), bicubic in latent space."""
    b, n, c = tokens.shape
    s = math.isqrt(n)
    if s == side:
        return tokens
    grid = tokens.transpose(1, 2).reshape(b, c, s, s).float()
    return F.interpolate(grid, size=(side, side), mode="bicubic").flatten(2).transpose(1, 2)


def generate_stream(
    pipe: ARPipeline,
    classes: Sequence[int | str],
    *,
    seed: int | None = None,
    sampler: str = "ar",
    preview_every: int = 0,
    **options: Any,
) -> Iterator[Preview | Finished]:
    """Generate like :meth:`ARPipeline.generate`, yielding a :class:`Preview` every
    ``preview_every`` sampler steps (0: none, no decoding cost) and then one :class:`Finished`.

    The sampler runs in a worker thread. Closing the iterator early stops it at its next step.
    Errors from the pipeline are raised here. The caller makes sure one stream at a time uses
    ``pipe``.
    """
    if isinstance(preview_every, bool) or not isinstance(preview_every, int) or preview_every < 0:
        from argen.errors import ConfigError

        raise ConfigError(f"preview_every must be an integer >= 0 (0 = no previews), got {preview_every!r}")
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    spent = {"s": 0.0, "n": 0}

    def on_step(n_done: int, codes: torch.Tensor) -> None:
        if stop.is_set():
            raise GenerationCancelled()
        if not preview_every:
            return
        t0 = time.perf_counter()
        try:
            images = decode_partial(pipe, n_done, codes)
        except Exception as exc:  # a preview is best effort; the generation itself goes on
            log.warning("no preview for %s at step %d: %s", pipe.name, n_done, exc)
            images = None
        spent["s"] += time.perf_counter() - t0
        if images is not None:
            spent["n"] += 1
            events.put(Preview(n_done, to_pil(images)))

    def work() -> None:
        hook: dict[str, Any] = {"callback": on_step}
        if preview_every:
            hook["callback_every"] = preview_every
        try:
            images = pipe.generate(list(classes), seed=seed, sampler=sampler, **hook, **options)
            stats = pipe.last_stats.as_dict()
            events.put(Finished(images, stats, spent["s"], spent["n"], pipe.last_codes))
        except BaseException as exc:  # handed to the consumer, which raises it
            events.put(exc)

    worker = threading.Thread(target=work, name="argen-generate", daemon=True)
    worker.start()
    try:
        while True:
            item = events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finished):
                return
    finally:
        stop.set()
        worker.join()
