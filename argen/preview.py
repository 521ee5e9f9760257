"""Live previews while a model samples.

Samplers report partial results through ``callback(n_done, codes_so_far)``. This module turns
those partial codes into images (:func:`decode_partial`). It also runs a generation in a worker
thread, so a caller can iterate over previews and then the final images
(:func:`generate_stream`). The Gradio demo uses it, and so can any other front end.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
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
    """Decode a sampler's partial codes into preview images (B, 3, H, W) in [-1, 1], as the model's
    family says (``Family.preview``); None when the family has no cheap preview."""
    return pipe.family.preview(pipe, codes) if pipe.family.preview is not None else None


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
            images = pipe.generate(**pipe.request(classes), seed=seed, sampler=sampler, **hook, **options)
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
