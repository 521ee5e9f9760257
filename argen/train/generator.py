"""Training a generator on a trained tokenizer's codes: a LlamaGen-style GPT on a VQ tokenizer
(next-token cross-entropy), a VAR transformer on a multi-scale VQ-VAE (next-scale cross-entropy) or
MAR on a KL VAE's continuous tokens (masked diffusion loss), with class dropout (the CFG null class or
MAR's fake latent) and an EMA of the weights. Result: an argen pretrained pipeline
folder (generator = EMA weights, tokenizer, sampling defaults, class names) that ``argen.load`` takes."""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from argen.convert.checkpoint import load_into, read_state_dict
from argen.errors import ConfigError
from argen.generators.llamagen import LlamaGen, LlamaGenConfig
from argen.generators.flowar import FlowAR, FlowARConfig
from argen.generators.mar import MAR, MARConfig
from argen.generators.var import VAR, VARConfig
from argen.images import make_grid
from argen.modeling import CONFIG_NAME, WEIGHTS_NAME, config_to_dict, read_json
from argen.pipeline import INDEX_NAME, ARPipeline
from argen.tokenizers.loading import load_tokenizer
from argen.tokenizers.msvq import MultiScaleVQVAE
from argen.tokenizers.vq import VQTokenizer
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

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=64, n_layer=2, n_head=4, multiple_of=32),
    "small": dict(dim=256, n_layer=6, n_head=8, multiple_of=64),
}
VAR_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(depth=2, embed_dim=64, num_heads=4),
    "small": dict(depth=5, embed_dim=256, num_heads=8, shared_aln=True),
}
_MAR_SMALL_MODEL = dict(noise_schedule="linear", pos_embed_init="sincos", mask_ratio_dist="cosine", mask_ratio_min=0.0,
                       attn_bias="distance", rope="2d", x0_loss_weight=1.0)
MAR_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4, decoder_embed_dim=64, decoder_depth=2,
                 decoder_num_heads=4, buffer_size=4, diffloss_d=2, diffloss_w=64, num_sampling_steps="20", **_MAR_SMALL_MODEL),
    "small": dict(encoder_embed_dim=256, encoder_depth=4, encoder_num_heads=8, decoder_embed_dim=256, decoder_depth=4,
                  decoder_num_heads=8, buffer_size=16, diffloss_d=3, diffloss_w=256, num_sampling_steps="50", **_MAR_SMALL_MODEL),
}  # what a small MAR from scratch needs (MARConfig's comments say why; all but x0_head add no parameters).
# Measured on shapes (8x8 tokens; the head's relative x0 error at alpha-bar 0.01 with 60 of 64 tokens known): 0.60
# without the bias (1500 steps; 4 known: 0.61), 0.37 with the distance bias, 0.053 adding 2D RoPE + read-out (3000 steps).
FLOWAR_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4, decoder_embed_dim=64, decoder_depth=2,
                 decoder_num_heads=4, diffloss_d=2, diffloss_w=64),
    # width 192: FlowAR's AdaLN blocks make 256 wide 13.7M parameters, 27 MB in float16, over the bundle budget
    "small": dict(encoder_embed_dim=192, encoder_depth=4, encoder_num_heads=8, decoder_embed_dim=192, decoder_depth=4,
                  decoder_num_heads=8, diffloss_d=3, diffloss_w=192),
}
# the CLI's width/depth/heads flags in each family's argument names (MAR: encoder and decoder alike)
_FLAG_NAMES = {"llamagen": ("dim", "n_layer", "n_head"), "var": ("embed_dim", "depth", "num_heads"),
               "mar": (("encoder_embed_dim", "decoder_embed_dim"), ("encoder_depth", "decoder_depth"),
                       ("encoder_num_heads", "decoder_num_heads"))}
_FLAG_NAMES["flowar"] = _FLAG_NAMES["mar"]
# per family: its training presets and its model config class
_FAMILIES = {"llamagen": (PRESETS, LlamaGenConfig), "var": (VAR_PRESETS, VARConfig), "mar": (MAR_PRESETS, MARConfig),
             "flowar": (FLOWAR_PRESETS, FlowARConfig)}
# arguments the trainer derives from the tokenizer, the data and its own flags: not settable as overrides
_DERIVED = {"img_size", "vae_stride", "vae_embed_dim", "class_num", "label_drop_prob", "attn_dropout", "proj_dropout",
            "scale", "vocab_size", "num_classes", "Cvae", "patch_nums", "cond_drop_rate", "drop_rate", "block_size",
            "class_dropout_prob", "token_dropout_p", "resid_dropout_p", "ffn_dropout_p"}


def generator_config(preset: str, family: str = "llamagen", *, width=None, depth=None, heads=None, **overrides: Any) -> dict[str, Any]:
    """Model arguments of a training preset for ``family`` (llamagen, var, mar, flowar), with overrides
    (any other argument of the family's config, e.g. MAR's ``mask_ratio_min``), checked by name."""
    if family not in _FAMILIES:
        raise ConfigError(f"unknown generator family {family!r}; known: {', '.join(_FAMILIES)}")
    presets, config_class = _FAMILIES[family]
    if preset not in presets:
        raise ConfigError(f"unknown generator preset {preset!r}; known: {', '.join(presets)}")
    known = {f.name for f in fields(config_class)} - _DERIVED
    unknown = sorted(set(overrides) - known)
    if unknown:
        derived = [k for k in unknown if k in _DERIVED]
        raise ConfigError(f"unknown {family} config option(s) {', '.join(unknown)}"
                          + (f" ({', '.join(derived)}: set from the tokenizer, data or flags)" if derived else "")
                          + f"; known: {', '.join(sorted(known))}")
    flags = {}
    for names, value in zip(_FLAG_NAMES[family], (width, depth, heads)):
        for name in (names if isinstance(names, tuple) else (names,)):
            flags[name] = value
    return {**presets[preset], **{k: v for k, v in {**flags, **overrides}.items() if v is not None}}


LATENT_MODES = ("sample", "mean")


def next_token_loss(model: torch.nn.Module, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Teacher-forced cross-entropy of codes (B, N) given the classes (token-wise: next token;
    scale-wise: every scale from the coarser ones)."""
    logits = model(codes, labels)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1))


def doubling_scales(latent: int) -> list[int]:
    """FlowAR's scale schedule for a latent size: 1, 2, 4, ... up to it (a power of two)."""
    if latent < 1 or latent & (latent - 1):
        raise ConfigError(f"FlowAR needs a power-of-two latent size (scales double up to it), got {latent}")
    return [2**i for i in range(latent.bit_length())]


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
    folder to ``settings.out`` and return it. ``latents`` (continuous tokenizers): train on posterior
    ``"sample"``s (as the official MAR and FlowAR) or the posterior ``"mean"`` (noise-free targets and
    context: a small model does not spend capacity on the VAE's posterior noise). ``init_from``: start
    from the generator weights of a pretrained folder (fine-tuning, or a longer schedule for a finished
    model); ``settings.resume`` still wins, its checkpoint replaces them."""
    out = Path(settings.out)
    if latents not in LATENT_MODES:
        raise ConfigError(f"latents must be one of {', '.join(LATENT_MODES)}, got {latents!r}")
    tok = load_tokenizer(tokenizer_dir)
    continuous = getattr(tok, "kind", None) == "continuous"
    if latents != "sample" and not continuous:
        raise ConfigError(f"latents={latents!r} is for a continuous (KL VAE) tokenizer; {tokenizer_dir} holds "
                          f"a discrete {tok.registry_name!r}")
    if not (continuous or isinstance(tok, (VQTokenizer, MultiScaleVQVAE))):
        raise ConfigError(f"{tokenizer_dir} holds a {tok.registry_name!r}, not a VQ, multi-scale VQ or continuous "
                          "(KL VAE, diffusers AutoencoderKL) tokenizer")
    check_stride(settings.resolution, tok.downsample)
    acc = make_accelerator(settings)
    dataset, infinite, class_names = make_dataset(settings.data, settings.resolution, hflip=settings.hflip,
                                                  random_crop=settings.random_crop, seed=settings.seed)
    h, w = tok.latent_grid(settings.resolution)
    seed_step(settings.seed, "init")  # the initial weights: the run's seed alone
    if continuous and family == "flowar":
        cfg = FlowARConfig(**model_args, img_size=settings.resolution, vae_stride=tok.downsample,
                           vae_embed_dim=tok.latent_channels, class_num=len(class_names), label_drop_prob=class_dropout,
                           attn_dropout=dropout, proj_dropout=dropout, scale=doubling_scales(h))
        model = FlowAR(cfg)
        model.init_weights()
    elif continuous:
        cfg = MARConfig(**model_args, img_size=settings.resolution, vae_stride=tok.downsample,
                        vae_embed_dim=tok.latent_channels, class_num=len(class_names), label_drop_prob=class_dropout,
                        attn_dropout=dropout, proj_dropout=dropout)
        model = MAR(cfg)
        model.init_weights()
    elif isinstance(tok, MultiScaleVQVAE):
        cfg = VARConfig(
            **model_args,
            vocab_size=tok.codebook_size,
            num_classes=len(class_names),
            Cvae=tok.config.z_channels,
            patch_nums=tok.patch_nums,
            cond_drop_rate=class_dropout,
            drop_rate=dropout,
        )
        model = VAR(cfg)
        model.init_weights()
        model.bind_tokenizer(tok)
    else:
        if h != w:
            raise ConfigError("LlamaGen's 2D RoPE needs a square token grid")
        cfg = LlamaGenConfig(
            **model_args,
            vocab_size=tok.codebook_size,
            block_size=h * w,
            num_classes=len(class_names),
            class_dropout_prob=class_dropout,
            token_dropout_p=dropout,
            resid_dropout_p=dropout,
            ffn_dropout_p=dropout,
        )
        model = LlamaGen(cfg)
        model.init_weights()
    if init_from:
        init_weights_from(model, init_from)
    ema = EMA(model, ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=settings.weight_decay)
    meta = {"kind": "generator", "config": asdict(cfg), "resolution": settings.resolution, "data": settings.data,
            "augment": settings.augment, "tokenizer": str(Path(tokenizer_dir).resolve()) if Path(tokenizer_dir).exists() else str(tokenizer_dir)}
    if continuous:
        meta["latents"] = latents
    prior = prior_train_time(out, settings.resume)
    start = load_checkpoint(out, {"generator": model, "ema": ema.shadow}, {"generator": opt}, meta) if settings.resume else 0
    ema.updates = start

    tok = tok.to(acc.device).eval().requires_grad_(False)
    model, opt = acc.prepare(model, opt)
    loader = step_loader(dataset, settings, acc, start, infinite)
    defaults = dict(sample_defaults or {"cfg_scale": 3.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0})
    bar = tqdm(total=settings.steps, initial=start, disable=not (settings.progress and acc.is_main_process), desc="generator")
    t0, logs, recent = time.time(), {}, RecentMeans()
    for step, (images, labels) in enumerate(loader, start=start):
        # every draw of the step (dropout, class dropout, posterior samples, MAR's orders, masks and
        # diffusion noise, FlowAR's times and noise) from (seed, step): a resumed run replays them
        seed_step(settings.seed, step, acc.process_index)
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings)
        with torch.no_grad():
            if continuous:  # FlowAR: scaled latents, split per scale inside; MAR: patchified tokens
                codes = tok.encode(images.to(acc.device), sample=latents == "sample")
                if family != "flowar":
                    codes = acc.unwrap_model(model).patchify(codes)
            else:
                codes = tok.encode(images.to(acc.device))
                codes = tok.flatten_codes(codes) if isinstance(tok, MultiScaleVQVAE) else codes.flatten(1)
        with acc.autocast():
            if continuous:
                loss = model(codes, labels.to(acc.device))  # MAR's masked diffusion / FlowAR's flow matching
            else:
                loss = next_token_loss(model, codes, labels.to(acc.device))
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
    saved = read_json(folder / CONFIG_NAME, f"--init-from {directory}: no generator there (no {CONFIG_NAME} in {folder})")
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
