"""The ``argen`` command line: generate, models, convert, train, bench, demo, eval.

Bad input prints one line (``argen: error: ...``) and exits with code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from argen.convert.checkpoint import WEIGHTS
from argen.errors import ArgenError, ConfigError
from argen.families import families, family_for_tokenizer, get_family
from argen.nn.diffusion import NOISE_SCHEDULES
from argen.options import parse_key_values
from argen.samplers.logits import CFG_SCHEDULES
from argen.samplers.mar import ORDERS as MAR_ORDERS

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16",
          "fp16": "float16"}


def _dtype(name: str | None):
    import torch

    if name is None:
        return None
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])


def _add_load_args(p: argparse.ArgumentParser) -> None:
    """--device, --dtype and --checkpoint-dir: where and how a command loads its models (read by _load_args)."""
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", help="float32 (default), bfloat16, float16")
    p.add_argument("--checkpoint-dir", help="folder holding official weight files (no download)")


def _load_args(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of ``argen.load`` (and the demo's) from the flags of :func:`_add_load_args`."""
    return {"device": args.device, "dtype": _dtype(args.dtype), "checkpoint_dir": args.checkpoint_dir}


# -- generate --------------------------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace) -> int:
    import argen
    from argen.images import make_grid
    from argen.zoo import DEFAULT_MODEL, IMAGENET_DEMO_CLASSES

    pipe = argen.load(args.model or DEFAULT_MODEL, **_load_args(args))
    if args.per_class < 1:
        raise ConfigError(f"--per-class must be >= 1, got {args.per_class}")
    classes = args.classes
    if not pipe.conditional:  # -n images of an unconditional model (image-GPT)
        ids = pipe.condition_ids(classes, args.per_class)
    else:
        if not classes:
            n = pipe.generator.num_classes
            classes = IMAGENET_DEMO_CLASSES if n == 1000 else list(range(n if n <= 16 else 8))
        ids = [c for c in pipe.resolve_classes(classes) for _ in range(args.per_class)]
    opts = {
        k: v
        for k, v in dict(
            cfg_scale=args.cfg,
            cfg_interval=args.cfg_interval,
            cfg_schedule=args.cfg_schedule,
            top_p_rule=args.top_p_rule,
            top_k=args.top_k,
            top_p=args.top_p,
            temperature=args.temperature,
            window=args.window,
            init=args.init,
            num_iter=args.num_iter,
            diffusion_steps=args.diffusion_steps,
            order=args.order,
            num_steps=args.num_steps,
            guidance_high=args.guidance_high,
            steps=args.steps,
            t_list=args.t_list,
            split=args.split,
            draft=args.draft,
            gamma=args.gamma,
            prefill=args.prefill,
            variant=args.variant,
        ).items()
        if v is not None
    }
    if args.greedy:
        opts["greedy"] = True
    if args.compile:
        opts["compile"] = True
    opts.update(parse_key_values(args.option))
    if args.grid_max < 1:
        raise ConfigError(f"--grid-max must be >= 1, got {args.grid_max}")
    folder = Path(args.save_images) if args.save_images else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    digits = max(4, len(str(len(ids) - 1)))
    shown = []  # the grid's images: the first --grid-max, so a request of any size runs in bounded memory
    for batch in pipe.generate_batches(**pipe.request(ids), seed=args.seed, sampler=args.sampler,
                                       batch_size=args.batch_size, progress=not args.quiet, **opts):
        for i, (c, im) in enumerate(zip(batch.classes, batch.images), start=batch.start):
            if folder is not None:
                im.save(folder / (f"{i:0{digits}d}_class{c}.png" if pipe.conditional else f"{i:0{digits}d}.png"))
            if len(shown) < args.grid_max:
                shown.append(im)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(shown, ncols=args.ncols or (args.per_class if 1 < args.per_class <= len(shown) else None)).save(out)
    if len(shown) < len(ids):
        where = f"all {len(ids)} are in {folder}" if folder else "use --save-images DIR to keep every image"
        print(f"argen: note: the grid {out} shows the first {len(shown)} of {len(ids)} images ({where}; "
              "--grid-max sets the cap)", file=sys.stderr)
    report = {"grid": str(out), "grid_images": len(shown), "images": len(ids),
              "saved_to": str(folder) if folder else None,
              "classes": list(dict.fromkeys(ids)) if pipe.conditional else None,
              "per_class": args.per_class, **pipe.last_stats.as_dict()}
    print(json.dumps(report))
    return 0


# -- demo ------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from argen.demo import launch

    launch(args.host, args.port, args.share, models=args.model, **_load_args(args), max_loaded=args.max_loaded,
           queue_size=args.queue_size)
    return 0


# -- bench -----------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    import argen
    from argen.bench import compare_models, format_comparison, format_table, parse_sampler, run_bench
    from argen.samplers import samplers_for
    from argen.zoo import DEFAULT_MODEL

    sampling = {k: v for k, v in dict(cfg_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                      temperature=args.temperature).items() if v is not None}
    reports, names = [], args.model or [DEFAULT_MODEL]
    pipes = [argen.load(name, **_load_args(args), random_weights=args.random_weights) for name in names]
    if args.samplers and len(pipes) > 1:  # several models: each runs the named samplers that can drive it
        idle = [s for s in args.samplers if not any(parse_sampler(s)[0] in samplers_for(p.generator) for p in pipes)]
        if idle:
            raise ConfigError(f"sampler(s) {', '.join(idle)} drive none of {', '.join(names)}")
    for pipe in pipes:
        # default: every sampler that can drive this model (token-wise: sjd, flow; the others: their default only)
        usable = samplers_for(pipe.generator)
        samplers = ([s for s in args.samplers if len(pipes) == 1 or parse_sampler(s)[0] in usable]
                    if args.samplers is not None else usable)
        classes = pipe.resolve_classes(args.classes) if args.classes else None
        report = run_bench(pipe, samplers, batch_sizes=args.batch_size, classes=classes, repeats=args.repeats,
                           seed=args.seed, sampling=sampling, warmup=not args.no_warmup)
        if args.random_weights:
            report["model"] += " (random weights)"
        print(format_table(report), flush=True)
        reports.append(report)
    if len(reports) > 1:
        report = compare_models(reports)
        print(format_comparison(report))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"JSON: {args.out}")
    return 0


# -- models ----------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from argen.zoo import TOKENIZERS, list_models

    entries = list_models()
    if args.json:
        print(json.dumps([{"name": e.name, "family": e.family, "params": e.params, "image_size": e.image_size,
                           "repo": e.repo_id, "files": e.files, "description": e.description} for e in entries],
                         indent=2))
        return 0
    print(f"{'name':24} {'family':10} {'params':>6} {'res':>4}  source / description")
    for e in entries:
        source = f"{e.repo_id}: {', '.join(e.files.values())}" if e.repo_id != "bundled" else f"bundled ({e.path})"
        print(f"{e.name:24} {e.family:10} {e.params:>6} {e.image_size:>4}  {source}")
        print(f"{'':48}{e.description}")
    for e in TOKENIZERS.values():
        print(f"{e.name:24} {'tokenizer':10} {e.params:>6} {e.image_size:>4}  "
              f"{e.repo_id}: {', '.join(e.files.values())}")
    return 0


# -- convert ---------------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    """`argen convert <family>`: the family's record converts, the result is saved as a pretrained folder."""
    from argen.pipeline import ARPipeline

    gen, tok, defaults = get_family(args.family).convert(args)
    pipe = ARPipeline(gen, tok, defaults=defaults, name=Path(args.out).name)
    pipe.save_pretrained(args.out)
    print(json.dumps({"out": args.out, "image_size": pipe.image_size, "generator": gen.config.__dict__}))
    return 0


# -- train -----------------------------------------------------------------------------------------
def _settings(args: argparse.Namespace):
    from argen.train import TrainSettings

    return TrainSettings(
        out=args.out, data=args.data, resolution=args.resolution, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, seed=args.seed,
        mixed_precision=args.mixed_precision, sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every, num_workers=args.num_workers, resume=args.resume,
        progress=not args.quiet, hflip=args.hflip, random_crop=args.random_crop,
    )


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from argen.train import train_tokenizer
    from argen.train.tokenizer import tokenizer_config

    if args.kind != "binary" and (args.bits is not None or args.token_each is not None or args.deterministic):
        raise ConfigError("--bits / --token-each / --deterministic are for --kind binary")
    if args.kind == "palette":
        return _fit_palette(args)
    if args.palette_images is not None or args.palette_pixels is not None:
        raise ConfigError("--palette-images / --palette-pixels are for --kind palette")
    common = dict(ch=args.ch, z_channels=args.z_channels, num_res_blocks=args.num_res_blocks,
                  norm_groups=args.norm_groups)
    if args.encoder is not None and args.kind == "kl":
        raise ConfigError("--encoder is for VQ tokenizers (--kind vq or multiscale); "
                          "a KL VAE has the official conv encoder")
    if args.kind == "binary":
        vq_only = {"--codebook-size": args.codebook_size, "--codebook-dim": args.codebook_dim,
                   "--patch-nums": args.patch_nums, "--encoder": args.encoder}
        given = [flag for flag, value in vq_only.items() if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: not options of a binary autoencoder; its code is --bits K per "
                              "latent cell, read as --token-each sub-tokens of K / token-each bits")
        cfg = tokenizer_config(args.preset, "binary", args.resolution, nf=args.ch, ch_mult=args.ch_mult,
                               res_blocks=args.num_res_blocks, emb_dim=args.z_channels, norm_groups=args.norm_groups,
                               codebook_size=args.bits, token_each=args.token_each,
                               deterministic=args.deterministic or None)
    elif args.kind == "kl":
        if args.codebook_size is not None or args.codebook_dim is not None or args.patch_nums is not None:
            raise ConfigError("--codebook-size / --codebook-dim / --patch-nums are for VQ tokenizers; a KL VAE's "
                              "latent width is --z-channels")
        cfg = tokenizer_config(args.preset, "kl", ch=args.ch, embed_dim=args.z_channels,
                               num_res_blocks=args.num_res_blocks, norm_groups=args.norm_groups, ch_mult=args.ch_mult)
    elif args.kind == "multiscale":
        if args.codebook_dim is not None:
            raise ConfigError("--codebook-dim is for --kind vq; a multi-scale VQ-VAE's code width is --z-channels")
        cfg = tokenizer_config(args.preset, "multiscale", args.resolution, vocab_size=args.codebook_size,
                               ch_mult=args.ch_mult, v_patch_nums=args.patch_nums, encoder_type=args.encoder, **common)
    else:
        if args.patch_nums is not None:
            raise ConfigError("--patch-nums is for --kind multiscale")
        cfg = tokenizer_config(args.preset, "vq", codebook_size=args.codebook_size,
                               codebook_embed_dim=args.codebook_dim,
                               encoder_ch_mult=args.ch_mult, decoder_ch_mult=args.ch_mult,
                               encoder_type=args.encoder, **common)
    out = train_tokenizer(_settings(args), cfg, perceptual_weights=args.perceptual_weights,
                          perceptual_weight=args.perceptual_weight, disc_weight=args.disc_weight,
                          disc_start=args.disc_start, dead_code_threshold=args.dead_code_threshold,
                          kl_weight=args.kl_weight)
    print(json.dumps({"out": str(out)}))
    return 0


def _fit_palette(args: argparse.Namespace) -> int:
    """`argen train tokenizer --kind palette`: k-means colours, no network to train."""
    from argen.train.palette import fit_palette

    nets = {"--ch": args.ch, "--ch-mult": args.ch_mult, "--num-res-blocks": args.num_res_blocks,
            "--z-channels": args.z_channels, "--norm-groups": args.norm_groups, "--codebook-dim": args.codebook_dim,
            "--encoder": args.encoder, "--patch-nums": args.patch_nums, "--perceptual-weights": args.perceptual_weights}
    given = [flag for flag, value in nets.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: options of a trained tokenizer; a palette (--kind palette) is "
                          "fitted by k-means and takes --codebook-size, --palette-images, --palette-pixels, --seed")
    out = fit_palette(args.out, args.data, args.resolution, args.codebook_size or 16,
                      images=args.palette_images or 512, pixels_per_image=args.palette_pixels or 256,
                      seed=args.seed, progress=not args.quiet)
    print(json.dumps({"out": str(out)}))
    return 0


def cmd_train_generator(args: argparse.Namespace) -> int:
    from argen.tokenizers import load_tokenizer
    from argen.train import train_generator
    from argen.train.generator import generator_config, training_family

    tok = load_tokenizer(args.tokenizer)
    family = training_family(tok, args.kind, args.tokenizer)
    if args.noise_schedule and "noise_schedule" not in family.config_fields():
        raise ConfigError(f"--noise-schedule is a MAR-style diffusion head's option; this run trains a {family.name}")
    overrides = {**parse_key_values(args.config),
                 **({"noise_schedule": args.noise_schedule} if args.noise_schedule else {})}
    model_args = generator_config(args.preset, family.name, width=args.dim, depth=args.depth, heads=args.heads,
                                  **overrides)
    defaults = family.sample_defaults(args.cfg, args.top_k, (args.resolution // tok.downsample,) * 2)
    out = train_generator(_settings(args), args.tokenizer, model_args, ema_decay=args.ema_decay,
                          class_dropout=args.class_dropout, dropout=args.dropout, sample_defaults=defaults,
                          family=family.name, latents=args.latents, init_from=args.init_from)
    print(json.dumps({"out": str(out)}))
    return 0


def cmd_train_dd(args: argparse.Namespace) -> int:
    from argen.train import TrainSettings, train_dd

    settings = TrainSettings(
        out=args.out, data="pairs", steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, seed=args.seed,
        mixed_precision=args.mixed_precision, checkpoint_every=args.checkpoint_every, resume=args.resume,
        progress=not args.quiet,
    )
    options = {k: v for k, v in dict(cfg_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                     temperature=args.temperature).items() if v is not None}
    options.update(parse_key_values(args.option))
    out = train_dd(settings, args.teacher, args.pairs, two_step_t=args.two_step_t, split=args.split,
                   options=options, shard_size=args.shard_size, pair_batch_size=args.pair_batch_size,
                   ema_decay=args.ema_decay, mse_weight=args.mse_weight, t0_prob=args.t0_prob)
    print(json.dumps({"out": str(out)}))
    return 0


def _train_args(p: argparse.ArgumentParser, steps: int, batch: int, lr: float) -> None:
    p.add_argument("--data", default="shapes", help="'shapes' or an image folder (one sub-folder per class)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, samples, the result)")
    p.add_argument("--preset", default="tiny", help="tiny or small")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=batch, help="per process")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"])
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=False,
                   help="image folders: mirror half of the training images (default: off; a mirrored letter, digit, "
                        "logo or text is another image: turn on for ImageNet-like photos)")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--random-crop", dest="random_crop", action="store_true", default=False,
                      help="image folders: a random square of each resized image (default: the centre, --center-crop)")
    crop.add_argument("--center-crop", dest="random_crop", action="store_false",
                      help="image folders: the centre square of each resized image (the default)")
    p.add_argument("--quiet", "-q", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="argen", description="Autoregressive image generation toolkit.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate images (writes a grid PNG)")
    g.add_argument("--model", "-m",
                   help="zoo name (see `argen models`) or a pretrained folder; default: the bundled model")
    g.add_argument("--classes", "-c", nargs="+", help="class ids or names (default: a demo set)")
    g.add_argument("--per-class", "-n", type=int, default=1,
                   help="images per class (an unconditional model such as image-GPT: images)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--sampler", help="ar (plain, token- or scale-wise), sjd (speculative Jacobi, token-wise), cspd "
                                     "(continuous speculative decoding with --draft, MAR), dd (distilled students) "
                                     "or mask (masked LMs: ELM's MLM); default: the first that drives the model "
                                     "(ar; dd; mask)")
    g.add_argument("--window", type=int, help="sjd: tokens per forward pass (default 16)")
    g.add_argument("--init", help="sjd: draft init, repeat-left (default), repeat-above or random")
    g.add_argument("--num-iter", type=int, help="MAR, mask: masked-generation iterations (transformer passes)")
    g.add_argument("--diffusion-steps", type=int, help="MAR: diffusion-head reverse steps per token")
    g.add_argument("--order", choices=MAR_ORDERS, help="MAR: token generation order (official: random)")
    g.add_argument("--num-steps", type=int, help="FlowAR: flow steps per scale (official count: 25 = 24 Euler steps)")
    g.add_argument("--guidance-high", type=float, help="FlowAR: guide only at flow times <= this (official --guidance)")
    g.add_argument("--steps", type=int, help="dd: 1 or 2 student passes at the model's released positions")
    g.add_argument("--t-list", type=lambda s: [int(t) for t in s.split(",")],
                   help="dd: explicit step positions, comma-separated, from 0 (e.g. 0,5)")
    g.add_argument("--split", type=int, help="dd: positions before it are snapped to the codebook (default: released)")
    g.add_argument("--draft", help="cspd: the draft model (zoo name or pretrained folder; same tokenizer as --model)")
    g.add_argument("--gamma", type=int, help="cspd: draft steps per verification (default 4)")
    g.add_argument("--prefill", type=float, help="cspd: share of the steps the target takes alone (default 0.15)")
    g.add_argument("--variant", choices=["exact", "official"],
                   help="cspd: exact (default; the distribution of ar with final_noise) or MarkXCloud/CSpD's official")
    g.add_argument("--cfg", type=float, help="classifier-free guidance scale (LlamaGen, MAR: 1 = off; VAR: 0 = off)")
    g.add_argument("--cfg-interval", type=int)
    g.add_argument("--cfg-schedule", choices=list(CFG_SCHEDULES), help="default: the model's own")
    g.add_argument("--top-p-rule", choices=["hf", "var"], help="default: the model's own")
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--temperature", type=float)
    g.add_argument("--greedy", action="store_true")
    g.add_argument("--compile", action="store_true",
                   help="token-wise ar / sjd: compiled decode step (torch.compile; CUDA graphs on CUDA); "
                        "compiles on first use")
    g.add_argument("--option", "-o", action="append", help="sampler option key=value (repeatable)")
    g.add_argument("--batch-size", type=int, help="images per batch (default: 16 on a CPU, 64 on a GPU); a request "
                   "of any size runs batch by batch")
    g.add_argument("--out", default="argen_samples.png", help="grid PNG path")
    g.add_argument("--grid-max", type=int, default=64, help="images shown in the grid at most (the first ones)")
    g.add_argument("--save-images", metavar="DIR", help="also write each image as a PNG, batch by batch as they finish")
    g.add_argument("--ncols", type=int)
    _add_load_args(g)
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="train a tokenizer or a generator (accelerate; torchrun works too)")
    tsub = t.add_subparsers(dest="what", required=True)
    tt = tsub.add_parser("tokenizer", help="a VQ tokenizer, VAR's multi-scale VQ-VAE, a KL VAE (MAR, FlowAR), ELM's "
                                          "binary autoencoder or a colour palette (pixel-wise)")
    _train_args(tt, steps=2000, batch=32, lr=2e-4)
    tt.add_argument("--kind", default="vq", choices=["vq", "multiscale", "kl", "binary", "palette"],
                    help="vq: LlamaGen's VQ (token-wise generators); multiscale: VAR's multi-scale VQ-VAE; "
                         "kl: MAR's KL VAE (continuous tokens); binary: ELM's binary autoencoder (--bits per latent "
                         "cell); palette: image-GPT-style colour palette fitted by "
                         "k-means (pixel-wise generators; --codebook-size colours, default 16)")
    tt.add_argument("--palette-images", type=int, help="palette: images sampled (default 512)")
    tt.add_argument("--palette-pixels", type=int, help="palette: random pixels per image (default 256)")
    tt.add_argument("--bits", type=int, help="binary: bits K per latent cell (preset tiny 8, small 10)")
    tt.add_argument("--token-each", type=int,
                    help="binary: sub-tokens per latent cell, each of K / token-each bits (default 1)")
    tt.add_argument("--deterministic", action="store_true",
                    help="binary: threshold the bits in training instead of drawing them (ELM's --deterministic)")
    tt.add_argument("--kl-weight", type=float, default=1e-6, help="kl: weight of the KL term (LDM's 1e-6)")
    tt.add_argument("--patch-nums", type=int, nargs="+",
                    help="multiscale: the scales (default: VAR's, cut at the latent size)")
    tt.add_argument("--ch", type=int)
    tt.add_argument("--ch-mult", type=int, nargs="+")
    tt.add_argument("--num-res-blocks", type=int)
    tt.add_argument("--z-channels", type=int)
    tt.add_argument("--norm-groups", type=int, help="GroupNorm groups (official and default 32)")
    tt.add_argument("--codebook-size", type=int)
    tt.add_argument("--encoder", choices=["conv", "patch"],
                    help="vq/multiscale: conv (the official, default) or patch: each token sees only its own "
                         "pixels, so one flat colour always gets one code (less for the generator to learn on simple "
                         "data)")
    tt.add_argument("--codebook-dim", type=int)
    tt.add_argument("--perceptual-weights", help="local torchvision vgg16 state dict for a perceptual loss")
    tt.add_argument("--perceptual-weight", type=float, default=1.0)
    tt.add_argument("--disc-weight", type=float, default=0.0, help="> 0 adds a PatchGAN adversarial loss")
    tt.add_argument("--disc-start", type=int, default=0)
    tt.add_argument("--dead-code-threshold", type=float, default=0.03,
                    help="re-seed codes used less than this fraction of a uniform share (0 = off). Restarts "
                         "raise codebook use on varied images, but on simple data (flat colours, shapes) they "
                         "spread one content over many codes that the generator must then learn: use 0 there")
    tt.set_defaults(func=cmd_train_tokenizer)
    tg = tsub.add_parser("generator", help="a generator on a trained tokenizer's codes: LlamaGen (VQ), "
                                         "VAR (multi-scale), MAR or FlowAR (KL VAE)")
    _train_args(tg, steps=3000, batch=32, lr=6e-4)
    tg.add_argument("--tokenizer", required=True,
                    help="folder written by `argen train tokenizer`; for MAR/FlowAR also a diffusers AutoencoderKL "
                         "folder or hub id (its own scaling factor)")
    trainable = [f for f in families() if f.trainable]
    kinds = dict.fromkeys(f.tokenizer_kind for f in trainable)
    tg.add_argument("--kind", choices=[n for f in trainable for n in (f.name, *f.aliases)],
                    help="generator family (default: from the tokenizer's kind: "
                         + ", ".join(f"{k}: {family_for_tokenizer(k).name}" for k in kinds) + ")")
    tg.add_argument("--dim", type=int, help="width")
    tg.add_argument("--depth", type=int)
    tg.add_argument("--heads", type=int)
    tg.add_argument("--dropout", type=float, default=0.1)
    tg.add_argument("--class-dropout", type=float, default=0.1)
    tg.add_argument("--ema-decay", type=float, default=0.999)
    tg.add_argument("--cfg", type=float, default=3.0, help="default guidance written to the result")
    tg.add_argument("--top-k", type=int, default=0, help="default top-k written to the result")
    tg.add_argument("--noise-schedule", choices=list(NOISE_SCHEDULES),
                    help="MAR: the diffusion head's betas (default: the preset's, linear; "
                         "the released MARs use cosine)")
    tg.add_argument("--latents", choices=["sample", "mean"], default="sample",
                    help="MAR/FlowAR: train on posterior samples (official) or the posterior mean (noise-free); "
                         "ELM: Bernoulli-sampled bits (official) or bits thresholded at 0.5")
    tg.add_argument("--init-from", metavar="DIR",
                    help="start from the generator weights of a pretrained folder (same architecture and tokenizer): "
                         "fine-tune it, or train a finished model longer; --resume's checkpoint takes precedence")
    tg.add_argument("--config", nargs="+", metavar="KEY=VALUE",
                    help="any other argument of the family's model config, e.g. mask_ratio_min=0.5 (MAR); "
                         "an unknown name lists the known ones")
    tg.set_defaults(func=cmd_train_generator)
    td = tsub.add_parser("dd", help="a distilled-decoding student (1-2 steps) of a LlamaGen or VAR teacher: "
                                    "(noise, tokens) pairs from the teacher's flow sampler, then training")
    td.add_argument("--teacher", required=True, help="zoo name or pretrained folder of a token-/scale-wise model")
    td.add_argument("--pairs", type=int, required=True, help="pairs to make (kept in OUT/pairs; a rerun resumes)")
    td.add_argument("--out", required=True, help="output folder (pairs, checkpoints, the student pipeline)")
    td.add_argument("--steps", type=int, default=2000)
    td.add_argument("--batch-size", type=int, default=32, help="pairs per step and process")
    td.add_argument("--lr", type=float, default=3e-4)
    td.add_argument("--weight-decay", type=float, default=0.0)
    td.add_argument("--warmup-steps", type=int, default=100)
    td.add_argument("--seed", type=int, default=0, help="the pairs' labels and noise, and the run's draws")
    td.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"])
    td.add_argument("--checkpoint-every", type=int, default=500)
    td.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    td.add_argument("--two-step-t", type=int, help="restart point of a 2-step run (default: LlamaGen 80/256 of "
                                                   "the tokens, VAR half the scales)")
    td.add_argument("--split", type=int, help="positions before it snap to the codebook (default: --two-step-t)")
    td.add_argument("--cfg", type=float, help="teacher's guidance for the pairs (default: the teacher's)")
    td.add_argument("--top-k", type=int)
    td.add_argument("--top-p", type=float)
    td.add_argument("--temperature", type=float)
    td.add_argument("--option", "-o", action="append", metavar="KEY=VALUE",
                    help="any other option of the flow sampler, e.g. ode_steps=16")
    td.add_argument("--shard-size", type=int, default=256, help="pairs per shard file")
    td.add_argument("--pair-batch-size", type=int, default=32, help="pairs per teacher batch")
    td.add_argument("--ema-decay", type=float, default=0.999)
    td.add_argument("--mse-weight", type=float, default=1.0,
                    help="weight of the continuous tokens' squared error (relative to the codebook's mean norm)")
    td.add_argument("--t0-prob", type=float, default=0.5,
                    help="share of samples trained from pure noise (t = 0); the rest restart at a uniform t")
    td.add_argument("--quiet", "-q", action="store_true")
    td.set_defaults(func=cmd_train_dd)

    b = sub.add_parser("bench", help="samplers against plain AR on one model: passes, tokens/pass, latency (JSON)")
    b.add_argument("--model", "-m", nargs="+",
                   help="zoo names or pretrained folders; default: the bundled model. Several: compared side by side")
    b.add_argument("--samplers", "-s", nargs="+",
                   help="sampler specs, e.g. sjd sjd:window=8,init=random (plain ar is always the baseline; "
                        "default: every sampler the model supports)")
    b.add_argument("--batch-size", "-b", type=int, nargs="+", default=[1])
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-warmup", action="store_true",
                   help="skip the untimed first run per sampler (big models on a CPU)")
    b.add_argument("--classes", "-c", nargs="+",
                   help="class ids or names: each repeat takes the next batch-size of them, cycling")
    b.add_argument("--cfg", type=float)
    b.add_argument("--top-k", type=int)
    b.add_argument("--top-p", type=float)
    b.add_argument("--temperature", type=float)
    b.add_argument("--random-weights", action="store_true", help="official architecture, random weights (no download)")
    _add_load_args(b)
    b.add_argument("--out", default="argen_bench.json", help="JSON report path")
    b.set_defaults(func=cmd_bench)

    dm = sub.add_parser("demo", help="launch the Gradio demo (live previews while sampling; offline, no share link)")
    dm.add_argument("--host", default="127.0.0.1", help="interface to serve on (0.0.0.0: every interface)")
    dm.add_argument("--port", type=int, default=7860)
    dm.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    dm.add_argument("--model", "-m", action="append",
                    help="model to offer (repeatable; default: every model usable here)")
    _add_load_args(dm)
    dm.add_argument("--max-loaded", type=int, default=2, help="pipelines kept in memory at once")
    dm.add_argument("--queue-size", type=int, default=16, help="requests that may wait in the queue")
    dm.set_defaults(func=cmd_demo)

    m = sub.add_parser("models", help="list the model zoo")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    c = sub.add_parser("convert", help="convert official checkpoints into an argen pretrained folder")
    csub = c.add_subparsers(dest="family", required=True)
    for fam in families():  # one subcommand per family with a converter, its arguments from its record
        if fam.convert is not None:
            cf = csub.add_parser(fam.name, aliases=list(fam.aliases), help=fam.description)
            for a in fam.convert_args:
                cf.add_argument(*a.flags, **a.options)
            cf.add_argument("--weights", choices=WEIGHTS, default="auto",
                            help="the generator's weights in a training checkpoint: auto (what the family's official "
                                 "evaluation loads: MAR's EMA, the others' live weights), ema or raw (the live ones); "
                                 "a flat release file loads with auto or raw")
            cf.add_argument("--out", required=True)
            cf.set_defaults(func=cmd_convert)
    from argen.eval.cli import add_eval_parser

    add_eval_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ArgenError as exc:
        print(f"argen: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"argen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("argen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
