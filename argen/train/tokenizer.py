"""Training a tokenizer -- LlamaGen's VQ (``kind="vq"``), VAR's multi-scale VQ-VAE
(``kind="multiscale"``): reconstruction (MSE) + codebook + commitment losses; or MAR's KL VAE
(``kind="kl"``): reconstruction + a weighted KL to N(0, I), its latent scale calibrated at the end
(1 / std of the latents, so a diffusion head sees unit-variance tokens); or ELM's binary autoencoder
(``kind="binary"``): reconstruction through Bernoulli bits passed on straight-through. Optionally a VGG feature
(perceptual) loss from locally available weights and a PatchGAN hinge adversarial loss.
Result: an argen tokenizer folder (config.json + model.safetensors)."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from argen.errors import ConfigError
from argen.images import make_grid, to_pil
from argen.modeling import build_config
from argen.tokenizers.binary import BinaryAEConfig, BinaryAutoEncoder
from argen.tokenizers.kl import KLVAE, KLConfig
from argen.tokenizers.msvq import PATCH_NUMS_256, MultiScaleVQConfig, MultiScaleVQVAE
from argen.tokenizers.vq import VQConfig, VQTokenizer
from argen.train.data import check_stride, make_dataset
from argen.train.loop import (
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
    # downsample 4: for tests and quick experiments
    "tiny": dict(ch=32, encoder_ch_mult=[1, 2, 2], decoder_ch_mult=[1, 2, 2], num_res_blocks=1,
                 z_channels=32, codebook_size=256, codebook_embed_dim=8),
    # downsample 8 (64px -> 8x8 tokens): the bundled shapes tokenizer
    "small": dict(ch=32, encoder_ch_mult=[1, 1, 2, 2], decoder_ch_mult=[1, 1, 2, 2], num_res_blocks=1,
                  z_channels=64, codebook_size=1024, codebook_embed_dim=8),
}


# multi-scale VQ-VAE presets (VAR's quantiser; the scales follow from the resolution, see patch_nums_for)
MULTISCALE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=16, vocab_size=256),
    "small": dict(ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=1, z_channels=32, vocab_size=1024),
}
# KL VAE presets (MAR's continuous tokenizer; downsample 4 and 8)
KL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, embed_dim=4, norm_groups=8),
    "small": dict(ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=1, embed_dim=8, norm_groups=8),
}
# ELM binary autoencoder presets (downsample 4 and 8; codebook_size = bits per latent cell)
BINARY_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(nf=32, ch_mult=[1, 2, 2], res_blocks=1, emb_dim=32, codebook_size=8, norm_groups=8),
    "small": dict(nf=32, ch_mult=[1, 1, 2, 2], res_blocks=1, emb_dim=64, codebook_size=10, norm_groups=8),
}
KINDS = ("vq", "multiscale", "kl", "binary")
TokenizerConfig = VQConfig | MultiScaleVQConfig | KLConfig | BinaryAEConfig


def patch_nums_for(latent: int) -> list[int]:
    """VAR-style scales ending at the latent size: VAR's 256px list (1, 2, 3, 4, 5, 6, 8, 10, 13,
    16) cut at ``latent`` (so 8 -> 1..6, 8), with ``latent`` itself as the last scale."""
    nums = [p for p in PATCH_NUMS_256 if p < latent]
    return nums + [latent]


def tokenizer_config(
    preset: str, kind: str = "vq", resolution: int | None = None, **overrides: Any
) -> TokenizerConfig:
    """A training preset with the options that were given (None = keep the preset's value). For the
    multi-scale kind, ``v_patch_nums`` defaults to :func:`patch_nums_for` the latent size at ``resolution``;
    for the binary kind, ``img_size`` to ``resolution`` and attention to the latent resolution (as ELM)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if kind == "vq":
        return build_config(VQConfig, PRESETS, preset, given, "tokenizer")
    if kind == "kl":
        return build_config(KLConfig, KL_PRESETS, preset, given, "KL tokenizer")
    if kind == "binary":
        return binary_config(preset, resolution, given)
    if kind != "multiscale":
        raise ConfigError(f"unknown tokenizer kind {kind!r}; known: {', '.join(KINDS)}")
    cfg = build_config(MultiScaleVQConfig, MULTISCALE_PRESETS, preset, given, "multi-scale tokenizer")
    if "v_patch_nums" not in given and resolution:
        cfg.v_patch_nums = patch_nums_for(resolution // cfg.downsample)
    return cfg


def binary_config(preset: str, resolution: int | None, given: dict[str, Any]) -> BinaryAEConfig:
    base = dict(BINARY_PRESETS.get(preset, {}))
    if resolution and "img_size" not in given:
        given = {**given, "img_size": resolution}
    if "attn_resolutions" not in given and "img_size" in given:
        ch_mult = given.get("ch_mult", base.get("ch_mult", BinaryAEConfig().ch_mult))
        given = {**given, "attn_resolutions": [given["img_size"] // 2 ** (len(ch_mult) - 1)]}
    return build_config(BinaryAEConfig, BINARY_PRESETS, preset, given, "binary tokenizer")


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: strided convs -> a map of real/fake logits."""

    def __init__(self, ch: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = ch
        for _ in range(layers - 1):
            mods += [nn.Conv2d(c, c * 2, 4, 2, 1), nn.GroupNorm(32, c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VGGPerceptual(nn.Module):
    """Distance between normalised VGG16 features (relu1_2 .. relu4_3); weights from a local file
    (a torchvision ``vgg16`` state dict), never downloaded."""

    def __init__(self, weights: str) -> None:
        super().__init__()
        from torchvision.models import vgg16

        from argen.convert.checkpoint import read_state_dict, unwrap

        net = vgg16(weights=None)
        net.load_state_dict(unwrap(read_state_dict(weights), source=weights))
        self.slices = nn.ModuleList([net.features[:4], net.features[4:9], net.features[9:16], net.features[16:23]])
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y])
        h = ((h + 1) / 2 - self.mean) / self.std
        loss = h.new_zeros(())
        for s in self.slices:
            h = s(h)
            a, b = F.normalize(h, dim=1).chunk(2)
            loss = loss + (a - b).pow(2).sum(1).mean()
        return loss


def vq_loss(
    model: nn.Module, images: torch.Tensor, perceptual: nn.Module | None = None, perceptual_weight: float = 1.0,
    kl_weight: float = 1e-6, code_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Reconstruction (MSE, in argen's [-1, 1]) + the tokenizer's own terms (VQ: codebook + commitment;
    KL VAE: ``kl_weight`` x KL; binary AE: ``code_weight`` x ELM's codebook loss, 0 as released)
    (+ perceptual) -> (loss, recon, logs)."""
    recon, q = model(images)
    rec = F.mse_loss(recon.float(), images)
    weights = {"kl": kl_weight, "code": code_weight}
    loss = rec + sum(weights.get(k, 1.0) * v for k, v in q.items())
    logs = {"rec": rec.item(), **{k: v.item() for k, v in q.items()}}
    if perceptual is not None:
        p = perceptual(recon.float(), images)
        loss = loss + perceptual_weight * p
        logs["perceptual"] = p.item()
    return loss, recon, logs


def train_tokenizer(
    settings: TrainSettings,
    config: TokenizerConfig,
    *,
    perceptual_weights: str | None = None,
    perceptual_weight: float = 1.0,
    disc_weight: float = 0.0,
    disc_start: int = 0,
    dead_code_threshold: float = 0.03,
    kl_weight: float = 1e-6,
    calibrate_scale: bool = True,
    code_weight: float = 0.0,
) -> Path:
    """Train a tokenizer (the config's type picks LlamaGen's VQ, VAR's multi-scale VQ-VAE, the KL
    VAE or ELM's binary autoencoder); write the result to ``settings.out`` and return that folder.
    ``dead_code_threshold``: codes hit less than this fraction of a uniform share are re-seeded. KL VAE:
    ``kl_weight``, and ``calibrate_scale`` sets its scaling factor to 1 / std of the latents of held-out
    images. Binary AE: ``code_weight`` x ELM's codebook loss (0, as released)."""
    out = Path(settings.out)
    check_stride(settings.resolution, config.downsample)
    acc = make_accelerator(settings)
    seed_step(settings.seed, "init")  # the initial weights (tokenizer, discriminator): the run's seed alone
    if isinstance(config, MultiScaleVQConfig):
        model = MultiScaleVQVAE(config)
        model.latent_grid(settings.resolution)  # the last scale must be the latent size
    elif isinstance(config, KLConfig):
        model = KLVAE(config)
    elif isinstance(config, BinaryAEConfig):
        model = BinaryAutoEncoder(config)
    else:
        model = VQTokenizer(config)
    if _restarts(model):
        model.quantize.dead_code_threshold = dead_code_threshold
    dataset, infinite, class_names = make_dataset(settings.data, settings.resolution, hflip=settings.hflip,
                                                  random_crop=settings.random_crop, seed=settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=settings.weight_decay)
    modules: dict[str, Any] = {"tokenizer": model}
    optims: dict[str, Any] = {"tokenizer": opt}
    disc = d_opt = None
    if disc_weight > 0:
        disc = PatchDiscriminator()
        d_opt = torch.optim.AdamW(disc.parameters(), lr=settings.lr, betas=(0.5, 0.9))
        modules["discriminator"], optims["discriminator"] = disc, d_opt
    perceptual = VGGPerceptual(perceptual_weights) if perceptual_weights else None
    meta = {"kind": "tokenizer", "config": asdict(config), "resolution": settings.resolution, "data": settings.data,
            "augment": settings.augment}
    prior = prior_train_time(out, settings.resume)
    start = load_checkpoint(out, {**modules, **_restart_state(model)}, optims, meta) if settings.resume else 0

    model, opt = acc.prepare(model, opt)
    if disc is not None:
        disc, d_opt = acc.prepare(disc, d_opt)
    if perceptual is not None:
        perceptual = perceptual.to(acc.device)
    loader = step_loader(dataset, settings, acc, start, infinite)
    held_out = torch.stack([make_dataset(settings.data, settings.resolution, split="test")[0][i][0]
                            for i in range(8)]) \
        if infinite else torch.stack([dataset.load(i)[0] for i in range(min(8, len(dataset)))])  # not augmented
    bar = tqdm(total=settings.steps, initial=start, disable=not (settings.progress and acc.is_main_process),
               desc="tokenizer")
    t0, logs, step, recent = time.time(), {}, start, RecentMeans()
    for step, (images, _) in enumerate(loader, start=start):
        seed_step(settings.seed, step, acc.process_index)
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings)
        images = images.to(acc.device)
        with acc.autocast():
            loss, recon, logs = vq_loss(model, images, perceptual, perceptual_weight, kl_weight, code_weight)
            if disc is not None and step >= disc_start:
                g = -disc(recon).mean()
                loss = loss + disc_weight * g
                logs["gen_adv"] = g.item()
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if settings.grad_clip:
            acc.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        if _restarts(acc.unwrap_model(model)):
            logs["restarted"] = acc.unwrap_model(model).quantize.restart_dead_codes()
        if disc is not None and step >= disc_start:
            with acc.autocast():
                d = F.relu(1 - disc(images)).mean() + F.relu(1 + disc(recon.detach())).mean()
            d_opt.zero_grad(set_to_none=True)
            acc.backward(d)
            d_opt.step()
            logs["disc"] = d.item()
        logs["loss"] = loss.item()
        recent.add(logs)
        bar.update(1)
        if step % settings.log_every == 0:
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
        done = step + 1
        if acc.is_main_process and (done % settings.sample_every == 0 or done == settings.steps):
            _sample_grid(acc.unwrap_model(model), held_out.to(acc.device),
                         out / "samples" / f"tokenizer_{done:06d}.png")
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            acc.wait_for_everyone()
            if acc.is_main_process:
                mods = {k: acc.unwrap_model(v)
                        for k, v in {"tokenizer": model,
                                     **({"discriminator": disc} if disc is not None else {})}.items()}
                mods.update(_restart_state(mods["tokenizer"]))
                save_checkpoint(out, done, mods, optims, {**meta, "settings": settings_dict(settings),
                                "train_time_s": train_time(prior, t0)})
    bar.close()
    acc.wait_for_everyone()
    if acc.is_main_process:
        final = acc.unwrap_model(model).eval()
        if isinstance(final, KLVAE) and calibrate_scale:
            final.config.scaling_factor = latent_scale(final, held_out, settings)
        final.save_pretrained(out)
        (out / "train.json").write_text(json.dumps({
            "kind": "tokenizer", "steps": settings.steps, "augment": settings.augment, "final_losses": recent.means(),
            "train_time_s": train_time(prior, t0), "settings": settings_dict(settings),
            "class_names": class_names, "num_processes": acc.num_processes,
        }, indent=2))
    return out


def _restarts(model: nn.Module) -> bool:
    """Whether the model's quantiser re-seeds dead codes (the VQ kinds; not the KL or binary AE)."""
    return hasattr(getattr(model, "quantize", None), "restart_dead_codes")


def _restart_state(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The dead-code restarts' running code usage, which is not in the model's weights: the checkpoint
    keeps it so that a resumed run re-seeds the same codes as an uninterrupted one."""
    quantize = getattr(model, "quantize", None)
    return {"restarts": {"usage": quantize.usage}} if isinstance(getattr(quantize, "usage", None), torch.Tensor) else {}


@torch.no_grad()
def latent_scale(vae: KLVAE, images: torch.Tensor, settings: TrainSettings, n: int = 256) -> float:
    """1 / std of the (unscaled) posterior means of up to ``n`` held-out images."""
    data = make_dataset(settings.data, settings.resolution, split="test")[0]
    batch = torch.stack([data[i][0] for i in range(min(n, len(data)))]).to(images.device)
    mean, _ = vae.posterior(batch)
    return float(1.0 / mean.float().std().clamp(min=1e-6))


@torch.no_grad()
def _sample_grid(model: VQTokenizer | MultiScaleVQVAE | KLVAE | BinaryAutoEncoder, images: torch.Tensor,
                 path: Path) -> None:
    model.eval()
    recon = model.decode(model.encode(images)).clamp(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(to_pil(torch.cat([images, recon])), ncols=images.shape[0]).save(path)
