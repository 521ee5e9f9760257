"""A generator family's record and the registry of them.

A family (LlamaGen, VAR, MAR, FlowAR, ...) is wired up once, in its record: the zoo, the CLI, the
demo, training and the pipeline read the record instead of each switching on the family's name, so a
new family is its modules plus one record (``register_family``), with no branch added elsewhere.
The first family registered for a tokenizer kind is the one training picks for such a tokenizer.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F

from argen.errors import ConfigError
from argen.generators.protocol import check_generator_class
from argen.options import json_arguments
from argen.tokenizers.protocol import tokenizer_protocol


@dataclass(frozen=True)
class Arg:
    """One command-line argument of ``argen convert <family>`` (``argparse.add_argument``'s arguments)."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    """An :class:`Arg`, written as the ``add_argument`` call it becomes."""
    return Arg(flags, options)


def official_args(prefix: str, what: str) -> tuple[Arg, Arg]:
    """``--{prefix}-config`` (a JSON file) and ``--{prefix}-arg key=value`` (repeatable): the official
    constructor arguments of one component of ``argen convert``, for custom sizes (read by :func:`official_values`)."""
    return (arg(f"--{prefix}-config", help=f"JSON file of official {what} arguments (for custom sizes)"),
            arg(f"--{prefix}-arg", action="append", help=f"official {what} key=value (repeatable)"))


def official_values(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The arguments given by the flags of :func:`official_args` (the file's, then the key=value ones)."""
    return json_arguments(getattr(args, f"{prefix}_config"), getattr(args, f"{prefix}_arg"))


def official_loader(load_generator: Callable[..., Any],
                    load_tokenizer: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
    """A ``load_official`` for a family whose two files load each on its own (``load_x(path, **args,
    device=...)``; the generator's loader also takes ``dtype``)."""

    def load(paths, generator_args, tokenizer_args, device, dtype) -> tuple[Any, Any]:
        tok = load_tokenizer(paths["tokenizer"], **tokenizer_args, device=device)
        return load_generator(paths["generator"], **generator_args, device=device, dtype=dtype), tok

    return load


def next_token_loss(model: torch.nn.Module, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Teacher-forced cross-entropy of codes (B, N) given the classes (token-wise: next token;
    scale-wise: every scale from the coarser ones)."""
    logits = model(codes, labels)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1))


def model_loss(model: torch.nn.Module, targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The generator's own training loss, its forward (MAR's masked diffusion, FlowAR's flow matching)."""
    return model(targets, labels)


def flat_codes(model: Any, tokenizer: Any, images: torch.Tensor, sample: bool) -> torch.Tensor:
    """A VQ tokenizer's codes of ``images``, flat (B, h * w) in raster order: a token-wise model's targets."""
    return tokenizer.encode(images).flatten(1)


def decode_token_grid(generator: Any, tokenizer: Any, codes: torch.Tensor) -> torch.Tensor:
    """Codes (B, N, *token_shape) in raster order -> images, through the generator's token grid."""
    return tokenizer.decode(codes.view(-1, *generator.token_grid, *codes.shape[2:]))


def token_preview(pipe: Any, codes: torch.Tensor) -> torch.Tensor:
    """The first tokens (B, n, *token_shape) of a raster as images: the missing ones repeat the last token
    (fewer artefacts than code 0) and are greyed out."""
    h, w = pipe.generator.token_grid
    b, done = codes.shape[:2]
    full = codes.new_zeros(b, h * w, *codes.shape[2:])
    full[:, :done] = codes
    if 0 < done < h * w:
        full[:, done:] = codes[:, done - 1 : done]
    images = pipe.decode(full)
    known = (torch.arange(h * w, device=images.device) < done).view(1, 1, h, w).to(images.dtype)
    return images * F.interpolate(known, size=images.shape[-2:], mode="nearest")  # 0 is mid-grey


def no_binding(generator: Any, tokenizer: Any) -> None:
    """A generator that needs nothing of its tokenizer but its codes (the token grid is checked by the pipeline)."""


def token_defaults(cfg_scale: float, top_k: int, latent_grid: tuple[int, int]) -> dict[str, Any]:
    """Sampling options written to a token model trained here: guidance and top-k, no nucleus cut."""
    return {"cfg_scale": cfg_scale, "top_k": top_k, "top_p": 1.0, "temperature": 1.0}


@dataclass(frozen=True)
class Family:
    """Everything argen needs to know about one generator family."""

    name: str
    generator_class: type  # the Pretrained generator: its config_class, kind and registry_name
    tokenizer_kind: str  # the tokenizer kind whose codes it models ('discrete', 'multiscale', 'continuous')
    description: str  # one line, for `argen convert` and the docs
    # official releases: (paths by component, generator_args, tokenizer_args, device, dtype) -> (generator, tokenizer)
    load_official: Callable[..., tuple[Any, Any]] | None = None
    # --random-weights: (generator_args, tokenizer_args) -> the official architecture, random weights, the
    # caller having seeded torch's global generator
    random_weights: Callable[[dict[str, Any], dict[str, Any]], tuple[Any, Any]] | None = None
    # `argen convert <name>`: its arguments (--out and --weights {auto,ema,raw}, for the generator's loader, are
    # common to every family) and the conversion -> (generator, tokenizer, defaults)
    convert_args: tuple[Arg, ...] = ()
    convert: Callable[[argparse.Namespace], tuple[Any, Any, dict[str, Any]]] | None = None
    # training from scratch: model-size presets, the config names of --dim/--depth/--heads, the config fields
    # a run takes from the tokenizer, data and flags, and their values:
    # derive_config(tokenizer, resolution=, num_classes=, class_dropout=, dropout=) -> those fields
    train_presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    size_args: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = ((), (), ())
    derived: frozenset[str] = frozenset()
    derive_config: Callable[..., dict[str, Any]] | None = None
    # a training step: (model, tokenizer, images, sample posterior?) -> targets; (model, targets, labels) -> loss
    train_targets: Callable[[Any, Any, torch.Tensor, bool], torch.Tensor] = flat_codes
    train_loss: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor] = next_token_loss
    # sampling options written to a model trained here: (cfg_scale, top_k, tokenizer latent grid) -> options
    sample_defaults: Callable[[float, int, tuple[int, int]], dict[str, Any]] = token_defaults
    # the pair: tie the generator to its tokenizer (VAR binds its VQ-VAE, MAR and FlowAR check the VAE's latents;
    # ConfigError when they do not fit), and turn the sampler's codes (on the tokenizer's device) into images
    bind: Callable[[Any, Any], None] = no_binding
    decode: Callable[[Any, Any, torch.Tensor], torch.Tensor] = decode_token_grid
    # live previews: (pipeline, the codes a sampler's callback reports so far) -> images, None = no cheap preview
    preview: Callable[[Any, torch.Tensor], torch.Tensor | None] | None = token_preview
    # a distilled-decoding student family: the name of the teacher family it distils, and (teacher, *,
    # two_step_t, split) -> (the student, initialised from the teacher, unbound; an init report)
    distils: str | None = None
    from_teacher: Callable[..., tuple[Any, dict[str, float]]] | None = None
    # other names the family answers to (`--kind pixel` for image-GPT; `argen convert` takes them too)
    aliases: tuple[str, ...] = ()

    @property
    def config_class(self) -> type:
        return self.generator_class.config_class

    @property
    def kind(self) -> str:
        """The generator kind, which names its protocol (:data:`argen.generators.protocol.PROTOCOLS`)."""
        return self.generator_class.kind

    @property
    def trainable(self) -> bool:
        return self.derive_config is not None

    def config_fields(self) -> set[str]:
        return {f.name for f in fields(self.config_class)}

    def new_generator(self, tokenizer: Any, model_args: dict[str, Any], **run: Any) -> Any:
        """A generator to train on ``tokenizer``'s codes, freshly initialised (a trainable family): ``model_args``
        plus the fields derived from the tokenizer and ``run`` (resolution, num_classes, class_dropout, dropout)."""
        derived = self.derive_config(tokenizer, **run)
        if set(derived) != self.derived:
            raise ConfigError(f"the {self.name} family derives {sorted(derived)} but declares {sorted(self.derived)}")
        model = self.generator_class(self.config_class(**model_args, **derived))
        model.init_weights()
        self.bind(model, tokenizer)
        return model


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry (its name must be new; its generator class must implement its
    kind's protocol, :mod:`argen.generators.protocol`, and its tokenizer kind be a known one)."""
    check_generator_class(family.generator_class)
    tokenizer_protocol(family.tokenizer_kind)
    if (family.distils is None) != (family.from_teacher is None):
        raise ConfigError(f"family {family.name!r}: a student family sets both distils and from_teacher")
    taken = set(_FAMILIES) | {a for f in _FAMILIES.values() for a in f.aliases}
    for name in (family.name, *family.aliases):
        if name in taken:
            raise ConfigError(f"a generator family named {name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family added with :func:`register_family` (tests, plugins)."""
    del _FAMILIES[get_family(name).name]


def families() -> list[Family]:
    """Every registered family, in registration order."""
    return list(_FAMILIES.values())


def get_family(name: str) -> Family:
    """The family named ``name``; unknown names are an error listing the known ones."""
    if name in _FAMILIES:
        return _FAMILIES[name]
    for f in _FAMILIES.values():
        if name in f.aliases:
            return f
    raise ConfigError(f"unknown generator family {name!r}; known: {', '.join(_FAMILIES)}")


def family_of(generator: Any) -> Family:
    """The family of a generator instance: its class's, or the nearest base class's (a student
    subclassing its teacher belongs to the teacher's family until it registers its own)."""
    by_class = {f.generator_class: f for f in _FAMILIES.values()}
    for cls in type(generator).__mro__:
        if cls in by_class:
            return by_class[cls]
    raise ConfigError(f"{type(generator).__name__} belongs to no registered generator family "
                      f"(known: {', '.join(_FAMILIES)}); register one with argen.families.register_family")


def student_family(teacher: Any) -> Family:
    """The distilled-decoding family whose students a teacher generator instance gets (``distils`` its family)."""
    name = family_of(teacher).name
    for f in _FAMILIES.values():
        if f.distils == name:
            return f
    known = ", ".join(f.distils for f in _FAMILIES.values() if f.distils)
    raise ConfigError(f"no distilled-decoding student for a {name} teacher ({type(teacher).__name__}); "
                      f"families with students: {known}")


def family_for_tokenizer(kind: str) -> Family:
    """The family training picks for a tokenizer of ``kind`` when none is named: the first registered."""
    for f in _FAMILIES.values():
        if f.tokenizer_kind == kind and f.trainable:
            return f
    known = ", ".join(f"{f.name} ({f.tokenizer_kind})" for f in _FAMILIES.values() if f.trainable)
    raise ConfigError(f"no generator family is trained on {kind!r} tokenizers; families: {known}")
