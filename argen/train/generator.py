"""Training a generator on a trained tokenizer's codes, for any family with a training recipe in its
record (:mod:`argen.families`): a LlamaGen-style GPT on a VQ tokenizer (next-token cross-entropy), a VAR
transformer on a multi-scale VQ-VAE (next-scale cross-entropy), MAR or FlowAR on a KL VAE's continuous
tokens (masked diffusion, flow matching), with class dropout (the CFG null class or MAR's fake latent)
and an EMA of the weights. Result: an argen pretrained pipeline folder (generator = EMA weights,
tokenizer, sampling defaults, class names) that ``argen.load`` takes."""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from argen.convert.checkpoint import load_into, read_state_dict
from argen.errors import ConfigError
from argen.families import Family, family_for_tokenizer, get_family
from argen.families.registry import next_token_loss  # noqa: F401  (the token families' loss, imported from here)
from argen.images import make_grid
from argen.modeling import CONFIG_NAME, WEIGHTS_NAME, config_to_dict, read_json
from argen.pipeline import INDEX_NAME, ARPipeline
from argen.tokenizers.loading import load_tokenizer
from argen.train.data import check_stride, make_dataset
from argen.train.loop import (
    EMA,
    RecentMeans,
    TrainSettings,
    load_checkpoint,
    lr_at,
    make_accelerator,
    prior_train_time,
    save_checkpoint,
    seed_step,
    settings_dict,
    step_loader,
    train_time,
)


def generator_config(preset: str, family: str = "llamagen", *, width=None, depth=None, heads=None,
                     **overrides: Any) -> dict[str, Any]:
    """Model arguments of a training preset for ``family`` (llamagen, var, mar, flowar, or any registered
    family with a training recipe), with overrides (any other argument of the family's config, e.g. MAR's
    ``mask_ratio_min``), checked by name."""
    fam = get_family(family)
    if preset not in fam.train_presets:
        raise ConfigError(f"unknown generator preset {preset!r}; known: {', '.join(fam.train_presets)}")
    known = fam.config_fields() - fam.derived
    unknown = sorted(set(overrides) - known)
    if unknown:
        derived = [k for k in unknown if k in fam.derived]
        raise ConfigError(f"unknown {family} config option(s) {', '.join(unknown)}"
                          + (f" ({', '.join(derived)}: set from the tokenizer, data or flags)" if derived else "")
                          + f"; known: {', '.join(sorted(known))}")
    flags = {name: value for names, value in zip(fam.size_args, (width, depth, heads)) for name in names}
    return {**fam.train_presets[preset], **{k: v for k, v in {**flags, **overrides}.items() if v is not None}}


LATENT_MODES = ("sample", "mean")


# what `argen train tokenizer --kind` makes, for each kind of tokenizer a family models
TOKENIZER_NEEDS = {"discrete": ("a VQ", "vq"), "multiscale": ("a multi-scale VQ", "multiscale"),
                   "continuous": ("a continuous (KL VAE or diffusers AutoencoderKL)", "kl"),
                   "pixels": ("a colour-palette", "palette"), "bits": ("a binary-autoencoder", "binary")}


def training_family(tokenizer: Any, family: str | None, source: str) -> Family:
    """The family a run trains on ``tokenizer`` (read from ``source``): the one named, or the first
    registered for the tokenizer's kind; one that models another kind of tokenizer is an error."""
    fam = get_family(family) if family else family_for_tokenizer(tokenizer.kind)
    if fam.tokenizer_kind != tokenizer.kind:
        what, kind = TOKENIZER_NEEDS.get(fam.tokenizer_kind, (f"a {fam.tokenizer_kind}", fam.tokenizer_kind))
        raise ConfigError(f"--kind {fam.name} needs {what} tokenizer, but {source} holds a {tokenizer.registry_name!r} "
                          f"(train it with --kind {kind})")
    if not fam.trainable:
        raise ConfigError(f"the {fam.name} family has no training recipe")
    return fam


def train_generator(
    settings: TrainSettings,
    tokenizer_dir: str,
    model_args: dict[str, Any],
    *,
    family: str | None = None,
    ema_decay: float = 0.999,
    class_dropout: float = 0.1,
    dropout: float = 0.1,
    sample_defaults: dict[str, Any] | None = None,
    latents: str = "sample",
    init_from: str | None = None,
) -> Path:
    """Train a generator on the codes of the (frozen) tokenizer in ``tokenizer_dir`` (an argen tokenizer
    folder; for MAR and FlowAR also a diffusers AutoencoderKL folder or hub id); write the pipeline
    folder to ``settings.out`` and return it. ``latents`` (tokenizers that sample): train on posterior
    ``"sample"``s (as the official MAR and FlowAR; ELM's Bernoulli bits) or the posterior ``"mean"``
    (noise-free targets and context: a small model does not spend capacity on the VAE's posterior noise;
    a BAE's bits thresholded at 0.5). ``init_from``: start
    from the generator weights of a pretrained folder (fine-tuning, or a longer schedule for a finished
    model); ``settings.resume`` still wins, its checkpoint replaces them."""
    out = Path(settings.out)
    if latents not in LATENT_MODES:
        raise ConfigError(f"latents must be one of {', '.join(LATENT_MODES)}, got {latents!r}")
    tok = load_tokenizer(tokenizer_dir)
    sampled = getattr(tok, "kind", None) in ("continuous", "bits")
    if latents != "sample" and not sampled:
        raise ConfigError(f"latents={latents!r} is for a tokenizer that samples (a KL VAE, a binary autoencoder); "
                          f"{tokenizer_dir} holds a discrete {tok.registry_name!r}")
    fam = training_family(tok, family, tokenizer_dir)
    check_stride(settings.resolution, tok.downsample)
    acc = make_accelerator(settings)
    dataset, infinite, class_names = make_dataset(settings.data, settings.resolution, hflip=settings.hflip,
                                                  random_crop=settings.random_crop, seed=settings.seed)
    seed_step(settings.seed, "init")  # the initial weights: the run's seed alone
    model = fam.new_generator(tok, model_args, resolution=settings.resolution, num_classes=len(class_names),
                              class_dropout=class_dropout, dropout=dropout)
    if init_from:
        init_weights_from(model, init_from)
    ema = EMA(model, ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=settings.weight_decay)
    meta = {"kind": "generator", "config": asdict(model.config), "resolution": settings.resolution,
            "data": settings.data, "augment": settings.augment,
            "tokenizer": str(Path(tokenizer_dir).resolve()) if Path(tokenizer_dir).exists() else str(tokenizer_dir)}
    if sampled:
        meta["latents"] = latents
    prior = prior_train_time(out, settings.resume)
    start = (load_checkpoint(out, {"generator": model, "ema": ema.shadow}, {"generator": opt}, meta)
             if settings.resume else 0)
    ema.updates = start

    tok = tok.to(acc.device).eval().requires_grad_(False)
    model, opt = acc.prepare(model, opt)
    loader = step_loader(dataset, settings, acc, start, infinite)
    defaults = dict(sample_defaults or fam.sample_defaults(3.0, 0, tok.latent_grid(settings.resolution)))
    bar = tqdm(total=settings.steps, initial=start, disable=not (settings.progress and acc.is_main_process),
               desc="generator")
    t0, logs, recent = time.time(), {}, RecentMeans()
    for step, (images, labels) in enumerate(loader, start=start):
        # every draw of the step (dropout, class dropout, posterior samples, MAR's orders, masks and
        # diffusion noise, FlowAR's times and noise) from (seed, step): a resumed run replays them
        seed_step(settings.seed, step, acc.process_index)
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings)
        with torch.no_grad():  # the family's targets: token ids, scale codes, MAR's patchified or FlowAR's latents
            codes = fam.train_targets(acc.unwrap_model(model), tok, images.to(acc.device), latents == "sample")
        with acc.autocast():
            loss = fam.train_loss(model, codes, labels.to(acc.device))
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if settings.grad_clip:
            acc.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        ema.update(acc.unwrap_model(model))
        logs = {"loss": loss.item()}
        recent.add(logs)
        bar.update(1)
        if step % settings.log_every == 0:
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
        done = step + 1
        if acc.is_main_process and (done % settings.sample_every == 0 or done == settings.steps):
            pipe = _pipeline(acc.unwrap_model(model), ema, tok, settings, defaults, class_names, out.name)
            images_out = pipe.generate(list(range(min(len(class_names), 10))) * 2, seed=0)
            (out / "samples").mkdir(parents=True, exist_ok=True)
            make_grid(images_out, ncols=min(len(class_names), 10)).save(out / "samples" / f"generator_{done:06d}.png")
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            acc.wait_for_everyone()
            if acc.is_main_process:
                save_checkpoint(out, done, {"generator": acc.unwrap_model(model), "ema": ema.shadow},
                                {"generator": opt}, {**meta, "settings": settings_dict(settings),
                                "train_time_s": train_time(prior, t0)})
    bar.close()
    acc.wait_for_everyone()
    if acc.is_main_process:
        pipe = _pipeline(acc.unwrap_model(model), ema, tok, settings, defaults, class_names, out.name)
        pipe.save_pretrained(out)
        (out / "train.json").write_text(json.dumps({
            "kind": "generator", "steps": settings.steps, "augment": settings.augment, "final_losses": recent.means(),
            "train_time_s": train_time(prior, t0), "settings": settings_dict(settings),
            "tokenizer": str(tokenizer_dir), "ema_decay": ema_decay, "num_processes": acc.num_processes,
            "init_from": str(init_from) if init_from else None,
        }, indent=2))
    return out


def init_weights_from(model: torch.nn.Module, directory: str | Path) -> None:
    """Copy the generator weights of an argen pipeline or generator folder into ``model``. The saved
    architecture must equal the model's, up to the dropout rates (every config field named *drop*) and
    the fields the config lists as ``TRAINING_ONLY``; a difference is an error naming the fields, a
    wrong checkpoint one naming the keys."""
    folder = Path(directory)
    if (folder / INDEX_NAME).is_file():
        folder = folder / read_json(folder / INDEX_NAME, "").get("generator", "generator")
    saved = read_json(folder / CONFIG_NAME,
                      f"--init-from {directory}: no generator there (no {CONFIG_NAME} in {folder})")
    kind = saved.pop("_class", model.registry_name)
    if kind != model.registry_name:
        raise ConfigError(f"--init-from {directory} holds a {kind!r}, this run trains a {model.registry_name!r}")
    now = config_to_dict(model.config)
    free = getattr(type(model.config), "TRAINING_ONLY", ())
    diffs = [f"{k}: saved {saved.get(k)!r} vs now {v!r}" for k, v in now.items()
             if "drop" not in k and k not in free and k in saved and saved[k] != v]
    if diffs:
        raise ConfigError(f"--init-from {directory}: another architecture or tokenizer ("
                          + "; ".join(diffs) + "); pass matching --dim/--depth/--heads/--config")
    load_into(model, read_state_dict(folder / WEIGHTS_NAME), source=str(folder))


def _pipeline(model, ema: EMA, tok, settings: TrainSettings, defaults, class_names, name) -> ARPipeline:
    """A pipeline over a copy of the model carrying the EMA weights."""
    gen = ema.copy_to(copy.deepcopy(model)).eval()
    return ARPipeline(gen, tok, image_size=settings.resolution, defaults=defaults, class_names=class_names, name=name)
