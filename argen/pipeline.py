"""ARPipeline: tokenizer + generator + sampler -> PIL images.

    pipe = argen.load("llamagen-gpt-b")            # or a folder written by save_pretrained
    images = pipe.generate(classes=[207, 360], seed=0, cfg_scale=4.0, top_k=2000)
    pipe.last_stats.as_dict()                      # forward passes, tokens/s, seed, ...
    pipe.save_pretrained("my-model")               # config.json + safetensors per component
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from argen.components import load_component
from argen.errors import ConfigError
from argen.families import family_of
from argen.images import to_pil
from argen.modeling import Pretrained, read_json
from argen.tokenizers.loading import load_tokenizer
from argen.version import __version__

INDEX_NAME = "model_index.json"
# images per batch when the caller gives none: what a small model's CFG batch and its KV cache need
# is far below a device's memory at these sizes, and larger batches gain little throughput on a CPU
DEFAULT_BATCH_SIZES = {"cpu": 16, "cuda": 64, "mps": 16}


def default_batch_size(device: torch.device | str) -> int:
    """Images per batch on ``device`` when the caller gives no ``batch_size``."""
    return DEFAULT_BATCH_SIZES.get(torch.device(device).type, 16)


@dataclass
class GeneratedBatch:
    """One finished batch of a request: its images' position in the request, classes, codes and
    images (PIL list, tensor in [-1, 1], or None for output_type 'codes')."""

    start: int
    classes: list[int]
    codes: torch.Tensor
    images: list[Image.Image] | torch.Tensor | None


@contextmanager
def _fits_in_memory(rows: int, device: torch.device) -> Iterator[None]:
    """A batch that the device cannot hold becomes one clear error naming the way out."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        text = str(exc)
        if (not isinstance(exc, torch.OutOfMemoryError) and "can't allocate memory" not in text
                and "out of memory" not in text):
            raise
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise ConfigError(f"a batch of {rows} images does not fit in {torch.device(device).type} memory ({first}); "
                          "use a smaller batch_size (CLI: --batch-size)") from None


# how a model named in a sampler option (cspd's draft) is loaded: argen.zoo.load, which sits above this module
# and registers itself when imported (argen/__init__ imports it)
_MODEL_LOADER: Callable[..., "ARPipeline"] | None = None


def set_model_loader(loader: Callable[..., "ARPipeline"]) -> None:
    global _MODEL_LOADER
    _MODEL_LOADER = loader


def _check_same_tokenizer(mine: Any, theirs: Any, role: str) -> None:
    """ConfigError unless ``theirs`` is the same tokenizer as ``mine`` (class, configuration, weights)."""
    if type(mine) is not type(theirs):
        raise ConfigError(f"the {role}'s tokenizer is a {type(theirs).__name__}, the target's a {type(mine).__name__}: "
                          "both must write the same tokens")
    a, b = vars(getattr(mine, "config", None) or object()), vars(getattr(theirs, "config", None) or object())
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        raise ConfigError(f"the {role}'s tokenizer differs from the target's in {diff[0]} ({b.get(diff[0])!r} vs "
                          f"{a.get(diff[0])!r}): both must write the same tokens")
    for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
        if a.shape != b.shape or not torch.equal(a.float().cpu(), b.float().cpu()):
            raise ConfigError(f"the {role}'s tokenizer has other weights than the target's (first difference: "
                              f"{name}): both must write the same tokens")


class ARPipeline:
    """Everything needed to turn conditions into images with one model."""

    def __init__(
        self,
        generator: Pretrained,
        tokenizer: Pretrained,
        *,
        image_size: int | None = None,
        defaults: dict[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        self.generator = generator.eval()
        self.tokenizer = tokenizer.eval()
        self.family = family_of(generator)
        self.family.bind(generator, tokenizer)
        # the tokenizer's latent grid the generator works on (MAR may pack p x p latents per token); a model
        # without one (VAR's scales) takes the tokenizer's image size
        grid = getattr(generator, "latent_grid", None) or getattr(generator, "token_grid", None)
        self.image_size = image_size or (grid[0] * tokenizer.downsample if grid
                                         else getattr(tokenizer, "image_size", None))
        if grid and self.image_size and tokenizer.latent_grid(self.image_size) != tuple(grid):
            raise ConfigError(
                f"tokenizer grid {tokenizer.latent_grid(self.image_size)} at {self.image_size}px does not "
                f"match the generator's token grid {tuple(grid)}"
            )
        self.defaults = dict(defaults or {})
        self.class_names = list(class_names) if class_names is not None else None
        self.name = name
        self.last_stats = None
        self.last_codes: torch.Tensor | None = None  # the codes behind the last generated images
        self.random_weights = False  # an official architecture with seeded random weights (argen.zoo)
        self._companions: dict[str, ARPipeline] = {}  # second models named by a sampler option, loaded once

    # -- devices -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ARPipeline":
        """Move both models; ``dtype`` applies to the generator (the tokenizer stays float32 on CPU)."""
        self.generator.to(device=device, dtype=dtype)
        tok_dtype = dtype if dtype is not None and torch.device(device or self.device).type == "cuda" else None
        self.tokenizer.to(device=device, dtype=tok_dtype)
        return self

    # -- generation --------------------------------------------------------------------------
    def resolve_classes(self, classes: Sequence[int | str] | int | str) -> list[int]:
        """Class ids from ids or (where the model has them) class names."""
        if isinstance(classes, (int, str)):
            classes = [classes]
        out = []
        for c in classes:
            if isinstance(c, str) and not c.lstrip("-").isdigit():
                if not self.class_names or c not in self.class_names:
                    known = f"; known names: {', '.join(self.class_names)}" if self.class_names else ""
                    raise ConfigError(f"unknown class name {c!r}{known}")
                out.append(self.class_names.index(c))
            else:
                out.append(int(c))
        return out

    @property
    def conditional(self) -> bool:
        """False for an unconditional model (image-GPT): it takes a number of images, not classes."""
        return bool(getattr(self.generator, "conditional", True))

    def condition_ids(self, classes: Sequence[int | str] | int | str | None,
                      num_images: int | None = None) -> list[int]:
        """The rows of a request: class ids (names resolved) for a class-conditional model; ``num_images``
        copies of its one condition (id 0) for an unconditional one. Asking the wrong way is an error."""
        given = classes is not None and (isinstance(classes, (int, str)) or len(classes) > 0)
        if not self.conditional:
            if given:
                raise ConfigError(f"{self.name or 'this model'} is unconditional: it takes no classes; ask for a "
                                  "number of images (num_images=N; CLI: -n N)")
            if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
                raise ConfigError(f"an unconditional model needs num_images, an integer >= 1 (got {num_images!r})")
            return [0] * num_images
        if num_images is not None:
            raise ConfigError("num_images is for unconditional models; a class-conditional one takes classes "
                              "(repeat a class for several images of it)")
        if not given:
            raise ConfigError(f"{self.name or 'this model'} is class-conditional: give classes (ids or names)")
        return self.resolve_classes(classes)

    def request(self, ids: Sequence[int]) -> dict[str, Any]:
        """The :meth:`generate` keywords for rows of condition ids (a class pool, a label file, the output of
        :meth:`condition_ids`): the classes, or for an unconditional model how many images."""
        return {"classes": list(ids)} if self.conditional else {"num_images": len(ids)}

    def generate(
        self,
        classes: Sequence[int | str] | int | str | None = None,
        *,
        num_images: int | None = None,
        seed: int | None = None,
        sampler: str | None = None,
        output_type: str = "pil",
        **options: Any,
    ) -> list[Image.Image] | torch.Tensor:
        """Generate one image per entry of ``classes`` (an unconditional model: ``num_images``). Sampling
        options (cfg_scale, cfg_interval,
        temperature, top_k, top_p, greedy, sampler-specific ones) default to the model's card; ``sampler``
        to the first that drives the model (:func:`argen.samplers.default_sampler`: ``ar``; ``dd`` for a student,
        ``mask`` for a masked LM).
        ``output_type`` 'pil' (list of images), 'pt' (tensor in [-1, 1]) or 'codes'. The request runs in
        batches of ``batch_size`` (default :func:`default_batch_size` of the device); ``progress``,
        ``first_index`` and how seeds and batch sizes relate: see :meth:`generate_batches`, which
        yields the batches as they finish, for requests too big to hold in memory."""
        batches = list(self.generate_batches(classes, num_images=num_images, seed=seed, sampler=sampler,
                                             output_type=output_type, **options))
        self.last_codes = torch.cat([b.codes for b in batches])
        if output_type == "codes":
            return self.last_codes
        if output_type == "pt":
            return torch.cat([b.images for b in batches])
        return [im for b in batches for im in b.images]

    def generate_batches(
        self,
        classes: Sequence[int | str] | int | str | None = None,
        *,
        num_images: int | None = None,
        seed: int | None = None,
        sampler: str | None = None,
        batch_size: int | None = None,
        output_type: str = "pil",
        progress: bool = False,
        first_index: int = 0,
        **options: Any,
    ) -> Iterator[GeneratedBatch]:
        """:meth:`generate`, one :class:`GeneratedBatch` at a time (sampled, decoded, then yielded), so
        any number of images streams through bounded memory; ``last_stats`` holds the request so far.

        Seeding: image i of a request (``first_index + i`` globally) is drawn from its own stream,
        seeded from (seed, its index), by the samplers that take per-image streams
        (:func:`argen.samplers.takes_row_streams`: ``ar`` on token- and scale-wise models): the same
        seed gives the same images whatever the batch size, and a request split over several calls
        (``first_index``) or processes gives what one call gives. The other samplers (``sjd``, MAR's and
        FlowAR's ``ar``) draw a batch from one stream, seeded from (seed, index of its first image):
        there the images depend on the batch size, and are the same for the same seed and batch size.
        """
        from argen import samplers

        if output_type not in ("pil", "pt", "codes"):
            raise ConfigError(f"output_type must be 'pil', 'pt' or 'codes', got {output_type!r}")
        ids = self.condition_ids(classes, num_images)
        if not ids:
            raise ConfigError("no classes given: nothing to generate")
        if batch_size is None:
            batch_size = default_batch_size(self.device)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(first_index, bool) or not isinstance(first_index, int) or first_index < 0:
            raise ConfigError(f"first_index must be an integer >= 0, got {first_index!r}")
        opts = {**self.defaults, **options}
        sampler = sampler or samplers.default_sampler(self.generator)
        drives = sampler in samplers.samplers_for(self.generator)  # else sample() names the samplers that do
        for name in samplers.model_options(sampler) if drives else ():
            if name in opts:
                opts[name] = self.companion(opts[name], name)
        used_seed = samplers.check_seed(seed)
        per_image = samplers.takes_row_streams(sampler, self.generator)
        several = len(ids) > batch_size
        self.last_stats = None
        with tqdm(total=len(ids), desc="generating", unit="img", disable=not (progress and several)) as bar:
            for start in range(0, len(ids), batch_size):
                chunk = ids[start : start + batch_size]
                index = first_index + start
                if per_image:
                    rng = samplers.RowStreams.from_seed(used_seed, index, len(chunk), self.device)
                else:
                    rng = torch.Generator(device=self.device).manual_seed(samplers.derive_seed(used_seed, index))
                with _fits_in_memory(len(chunk), self.device):
                    codes, stats = samplers.sample(self.generator, chunk, sampler=sampler, generator=rng,
                                                   progress=progress and not several, **opts)
                    images = None if output_type == "codes" else self._images(codes, stats.latents)
                stats.seed = used_seed
                self.last_stats = stats if self.last_stats is None else self.last_stats.merge(stats)
                self.last_codes = codes
                bar.update(len(chunk))
                if output_type == "pil":
                    images = to_pil(images)
                yield GeneratedBatch(start, chunk, codes, images)

    def companion(self, model: Any, role: str = "draft") -> Any:
        """The generator of a second model a sampler works with (cspd's ``draft``): a zoo name or folder
        (loaded once on this pipeline's device and dtype), a pipeline, or a generator as it is. A
        pipeline's tokenizer must be this one's: the two models write the same tokens."""
        if isinstance(model, (str, os.PathLike)):
            key = f"{role}:{model}"
            if key not in self._companions:
                dtype = next(self.generator.parameters()).dtype
                self._companions[key] = _MODEL_LOADER(model, device=self.device,
                                                      dtype=None if dtype == torch.float32 else dtype,
                                                      random_weights=self.random_weights)
            model = self._companions[key]
        if isinstance(model, ARPipeline):
            _check_same_tokenizer(self.tokenizer, model.tokenizer, role)
            return model.generator
        return model

    def _images(self, codes: torch.Tensor, latents: torch.Tensor | None) -> torch.Tensor:
        if latents is not None:  # the sampler's image is not a function of its codes (more_smooth)
            with torch.inference_mode():
                return self.tokenizer.decode_latents(latents.to(self.tokenizer_device)).clamp(-1, 1)
        return self.decode(codes)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Codes as the sampler gives them (token ids (B, N); scale-wise codes flat, in scale order; continuous
        tokens (B, N, C)) -> images (B, 3, H, W) in [-1, 1] (clamped), decoded as the generator's family says."""
        dev = self.tokenizer_device
        outs = [self.family.decode(self.generator, self.tokenizer, codes[i : i + batch_size].to(dev))
                for i in range(0, codes.shape[0], batch_size)]
        return torch.cat(outs).clamp(-1, 1)

    @property
    def tokenizer_device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    # -- save / load -------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, *, generator_dtype: torch.dtype | None = None) -> Path:
        """Write the folder; ``generator_dtype`` (e.g. torch.float16) stores the generator's weights in
        that type (they are cast back on loading)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.generator.save_pretrained(directory / "generator", storage_dtype=generator_dtype)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        index = {
            "_argen_version": __version__,
            "name": self.name,
            "generator": "generator",
            "tokenizer": "tokenizer",
            "image_size": self.image_size,
            "defaults": self.defaults,
            "class_names": self.class_names,
        }
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> "ARPipeline":
        directory = Path(directory)
        index = read_json(directory / INDEX_NAME, f"{directory} is not an argen pretrained folder (no {INDEX_NAME})")
        gen = load_component(directory / index.get("generator", "generator"), device=device, dtype=dtype)
        tok = load_tokenizer(directory / index.get("tokenizer", "tokenizer"), device=device)
        return cls(
            gen,
            tok,
            image_size=index.get("image_size"),
            defaults=index.get("defaults"),
            class_names=index.get("class_names"),
            name=index.get("name") or directory.name,
        )

