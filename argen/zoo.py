"""Named models: the small bundled models under ``assets/`` (offline) and the official releases (hub
repository or URL + file names; the family's record converts them). ``argen.load(name_or_dir)`` is the one
way in.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from argen.errors import ConfigError, UnknownModelError
from argen.families import get_family
from argen.families.elm import ELM_FID
from argen.families.elm_mlm import ELM_MLM_SAMPLING
from argen.families.igpt import IGPT_DEFAULTS
from argen.families.mar import MAR_EVAL
from argen.hub import resolve_file
from argen.pipeline import INDEX_NAME, ARPipeline, set_model_loader

LLAMAGEN_REPO = "FoundationVision/LlamaGen"
IMAGENET_DEMO_CLASSES = [207, 360, 387, 974, 88, 979, 417, 279]  # LlamaGen's sample_c2i.py labels: the default classes
# official demo defaults (sample_c2i.py); the FID protocol uses cfg 2.0 (B, L), 1.75 (XL, XXL), 1.65 (3B), top_k 0
LLAMAGEN_DEMO = {"cfg_scale": 4.0, "top_k": 2000, "top_p": 1.0, "temperature": 1.0}


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    description: str
    image_size: int
    repo_id: str
    files: dict[str, str]  # component -> file name in the repository
    generator_args: dict[str, Any] = field(default_factory=dict)
    tokenizer_args: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    params: str = ""
    urls: dict[str, str] = field(default_factory=dict)  # component -> direct URL (releases not on the hub)
    repos: dict[str, str] = field(default_factory=dict)  # component -> another hub repository than repo_id


def _llamagen(size: str, preset: str, params: str, res: int, fid: str) -> ZooEntry:
    suffix = "" if res == 256 else f"-{res}"
    return ZooEntry(
        name=f"llamagen-gpt-{size.lower()}{suffix}",
        family="llamagen",
        description=f"LlamaGen {preset} class-to-image, ImageNet {res}px, VQ-16 tokens (FID {fid})",
        image_size=res,
        repo_id=LLAMAGEN_REPO,
        files={"generator": f"c2i_{size}_{res}.pt", "tokenizer": "vq_ds16_c2i.pt"},
        generator_args={"preset": preset, "block_size": (res // 16) ** 2},
        tokenizer_args={"preset": "VQ-16"},
        defaults=dict(LLAMAGEN_DEMO),
        params=params,
    )


VAR_REPO = "FoundationVision/var"
# official demo settings (cfg 4, top_k 900, top_p 0.95); the FID protocol uses cfg 1.5, top_p 0.96
VAR_DEMO = {"cfg_scale": 4.0, "top_k": 900, "top_p": 0.95, "temperature": 1.0}


def _var(depth: int, params: str, fid: str) -> ZooEntry:
    res = 512 if depth == 36 else 256
    return ZooEntry(
        name=f"var-d{depth}",
        family="var",
        description=f"VAR-d{depth} class-to-image, ImageNet {res}px, next-scale prediction in 10 steps (FID {fid})",
        image_size=res,
        repo_id=VAR_REPO,
        files={"generator": f"var_d{depth}.pth", "tokenizer": "vae_ch160v4096z32.pth"},
        generator_args={"preset": f"d{depth}"},
        tokenizer_args={"preset": "vae_ch160v4096z32-512" if res == 512 else "vae_ch160v4096z32"},
        defaults=dict(VAR_DEMO),
        params=params,
    )


MAR_REPO = "LTH14/mar"  # released on Dropbox (util/download.py); file names as its pretrained_models/ folder
MAR_URLS = {
    "vae": "https://www.dropbox.com/scl/fi/hhmuvaiacrarfg28qxhwz/kl16.ckpt?rlkey=l44xipsezc8atcffdp4q7mwmh&dl=1",
    "base": "https://www.dropbox.com/scl/fi/f6dpuyjb7fudzxcyhvrhk/checkpoint-last.pth?rlkey=a6i4bo71vhfo4anp33n9ukujb&dl=1",
    "large": "https://www.dropbox.com/scl/fi/pxacc5b2mrt3ifw4cah6k/checkpoint-last.pth?rlkey=m48ovo6g7ivcbosrbdaz0ehqt&dl=1",
    "huge": "https://www.dropbox.com/scl/fi/1qmfx6fpy3k7j9vcjjs3s/checkpoint-last.pth?rlkey=4lae281yzxb406atp32vzc83o&dl=1",
}


def _mar(size: str, cfg: float, params: str, fid: str) -> ZooEntry:
    return ZooEntry(
        name=f"mar-{size}",
        family="mar",
        description=f"MAR-{size[0].upper()} class-to-image, ImageNet 256px, KL-16 tokens + diffusion head (FID {fid})",
        image_size=256,
        repo_id=MAR_REPO,
        files={"generator": f"mar/mar_{size}/checkpoint-last.pth", "tokenizer": "vae/kl16.ckpt"},
        urls={"generator": MAR_URLS[size], "tokenizer": MAR_URLS["vae"]},
        generator_args={"preset": f"mar_{size}"},
        tokenizer_args={"preset": "kl16"},
        defaults={**MAR_EVAL, "cfg_scale": cfg},
        params=params,
    )


DD_REPO = "microsoft/distilled_decoding"


def _dd_llamagen(size: str, params: str) -> ZooEntry:
    return ZooEntry(
        name=f"dd-llamagen-{size.lower()}",
        family="dd-llamagen",
        description=f"Distilled Decoding student of LlamaGen GPT-{size}: 256 tokens in 1 or 2 passes, ImageNet 256px",
        image_size=256,
        repo_id=DD_REPO,
        files={"generator": f"LlamaGen-DD/llamagen-{size}.pt", "tokenizer": "vq_ds16_c2i.pt"},
        repos={"tokenizer": LLAMAGEN_REPO},
        generator_args={"preset": f"dd-llamagen-{size.lower()}"},
        tokenizer_args={"preset": "VQ-16"},
        params=params,
    )


def _dd_var(depth: int, params: str) -> ZooEntry:
    return ZooEntry(
        name=f"dd-var-d{depth}",
        family="dd-var",
        description=f"Distilled Decoding student of VAR-d{depth}: 10 scales in 1 or 2 passes, ImageNet 256px",
        image_size=256,
        repo_id=DD_REPO,
        files={"generator": f"VAR-DD/var-d{depth}.pth", "tokenizer": "vae_ch160v4096z32.pth"},
        repos={"tokenizer": VAR_REPO},
        generator_args={"preset": f"dd-var-d{depth}"},
        tokenizer_args={"preset": "vae_ch160v4096z32"},
        params=params,
    )


FLOWAR_REPO = "OliverRen/FlowAR"


def _flowar(size: str, preset: str, steps: int, cfg: float, guidance: float, params: str, fid: str) -> ZooEntry:
    # the README's sampling settings; the VAE is MAR's KL-16 (kl16.ckpt, from MAR's release)
    return ZooEntry(
        name=f"flowar-{size.lower()}",
        family="flowar",
        description=f"FlowAR-{size} class-to-image, ImageNet 256px, scale-wise flow matching on KL-16 (FID {fid})",
        image_size=256,
        repo_id=FLOWAR_REPO,
        files={"generator": f"FlowAR-{size}.pth", "tokenizer": "vae/kl16.ckpt"},
        urls={"tokenizer": MAR_URLS["vae"]},
        generator_args={"preset": preset},
        tokenizer_args={"preset": "kl16"},
        defaults={"cfg_scale": cfg, "cfg_schedule": "linear", "num_steps": steps, "guidance_high": guidance},
        params=params,
    )


def _igpt(size: str, params: str) -> ZooEntry:
    # transformers-format releases: the palette is the image processor's clusters
    return ZooEntry(
        name=f"igpt-{size[0]}",
        family="igpt",
        description=f"image-GPT-{size[0].upper()} (OpenAI), unconditional 32x32 pixels over a 512-colour palette, "
                    "ImageNet",
        image_size=32,
        repo_id=f"openai/imagegpt-{size}",
        files={"generator": "pytorch_model.bin", "config": "config.json", "tokenizer": "preprocessor_config.json"},
        generator_args={"preset": f"igpt-{size[0]}"},
        defaults=dict(IGPT_DEFAULTS),
        params=params,
    )


ELM_REPO = "xuantonglll/ELM"


def _elm(release: str, params: str) -> ZooEntry:
    """An ELM LM (``gpt/<release>.pth``) with the BAE of token_each x code_dim bits (1-16 and 2-8: bae_16)."""
    size, each, code = release.split("-")
    bits = int(each) * int(code)
    return ZooEntry(
        name=f"elm-{release.lower()}",
        family="elm",
        description=f"ELM-{size} AR LM, ImageNet 256px class-to-image, {bits}-bit BAE tokens read as {each} "
                    f"sub-token{'s' if int(each) > 1 else ''} of {code} bits",
        image_size=256,
        repo_id=ELM_REPO,
        files={"generator": f"gpt/{release}.pth", "tokenizer": f"bae/bae_{bits}/binaryae_ema.th"},
        generator_args={"release": release},
        defaults=dict(ELM_FID),
        params=params,
    )


def _elm_mlm(size: str, params: str) -> ZooEntry:
    """An ELM masked LM (``gpt/mlm<size>-1-16.pth``, one 16-bit sub-token per position) with the 16-bit BAE;
    built without the unused heads, which the released files' sizes say they lack (:mod:`argen.families.elm_mlm`)."""
    return ZooEntry(
        name=f"elm-mlm-{size.lower()}-1-16",
        family="elm-mlm",
        description=f"ELM-{size} masked LM, ImageNet 256px class-to-image, 16-bit BAE tokens, MaskGIT-style "
                    "decoding (mask sampler); a strict load of the released file is unverified",
        image_size=256,
        repo_id=ELM_REPO,
        files={"generator": f"gpt/mlm{size}-1-16.pth", "tokenizer": "bae/bae_16/binaryae_ema.th"},
        generator_args={"preset": size, "keep_unused": False},
        defaults=dict(ELM_MLM_SAMPLING),
        params=params,
    )


OFFICIAL: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        _llamagen("B", "GPT-B", "111M", 256, "5.46"),
        _llamagen("B", "GPT-B", "111M", 384, "6.09"),
        _llamagen("L", "GPT-L", "343M", 256, "3.80"),
        _llamagen("L", "GPT-L", "343M", 384, "3.07"),
        _llamagen("XL", "GPT-XL", "775M", 384, "2.62"),
        _llamagen("XXL", "GPT-XXL", "1.4B", 384, "2.34"),
        _llamagen("3B", "GPT-3B", "3.1B", 384, "2.18"),
        _var(16, "310M", "3.55"),
        _var(20, "601M", "2.95"),
        _var(24, "1.0B", "2.33"),
        _var(30, "2.0B", "1.97"),
        _var(36, "2.4B", "2.63 @512"),
        _mar("base", 2.9, "208M", "2.31"),
        _mar("large", 3.0, "479M", "1.78"),
        _mar("huge", 3.2, "943M", "1.55"),
        _flowar("S", "flowar_small", 25, 4.3, 0.9, "170M", "3.61"),
        _flowar("L", "flowar_large", 25, 2.4, 0.9, "589M", "1.90"),
        _flowar("H", "flowar_huge", 50, 2.4, 0.7, "1.9B", "1.65"),
        _dd_llamagen("B", "98.3M"),
        _dd_llamagen("L", "326M"),
        _dd_var(16, "328M"),
        _dd_var(20, "635M"),
        _dd_var(24, "1.09B"),
        _igpt("small", "76M"),
        _igpt("medium", "455M"),
        _igpt("large", "1.4B"),
        _elm("L-1-16", "444M"),
        _elm("L-2-8", "313M"),
        _elm("L-2-10", "316M"),
        _elm("L-2-12", "328M"),
        _elm("XL-1-16", "901M"),
        _elm("XL-2-8", "737M"),
        _elm("XL-2-10", "741M"),
        _elm("XL-2-12", "757M"),
        _elm("XXL-1-16", "1.6B"),
        _elm("XXL-2-10", "1.4B"),
        _elm("XXL-2-12", "1.4B"),
        _elm("2B-2-12", "1.9B"),
        _elm_mlm("L", "445M"),
        _elm_mlm("XL", "903M"),
        _elm_mlm("XXL", "1.6B"),
    ]
}
# the tokenizer alone (for encode/decode), listed so users can fetch it by name
TOKENIZERS: dict[str, ZooEntry] = {
    "llamagen-vq16": ZooEntry(
        name="llamagen-vq16",
        family="llamagen-vq",
        description="LlamaGen VQ-16 tokenizer (16384 codes, downsample 16; rFID 2.19 @256)",
        image_size=256,
        repo_id=LLAMAGEN_REPO,
        files={"tokenizer": "vq_ds16_c2i.pt"},
        tokenizer_args={"preset": "VQ-16"},
        params="72M",
    )
}


def _random_pipeline(entry: ZooEntry, device, dtype) -> ARPipeline:
    """The official architecture with seeded random weights (output layers non-zero, so the logits
    are not all equal)."""
    family = get_family(entry.family)
    if family.random_weights is None:
        raise ConfigError(f"the {family.name} family has no random-weights construction")
    torch.manual_seed(0)
    gen, tok = family.random_weights(entry.generator_args, entry.tokenizer_args)
    gen = gen.to(device=device, dtype=dtype or torch.float32).eval()
    pipe = ARPipeline(gen, tok.to(device).eval(), image_size=entry.image_size, defaults=entry.defaults, name=entry.name)
    pipe.random_weights = True  # a draft named by this pipeline's samplers is built the same way
    return pipe


ASSETS = Path(os.environ.get("ARGEN_ASSETS", Path(__file__).resolve().parents[1] / "assets"))


@dataclass(frozen=True)
class BundledEntry:
    """A small model shipped in the repository's ``assets/`` (works offline)."""

    name: str
    folder: str
    description: str
    image_size: int
    params: str = ""
    family: str = "llamagen"
    repo_id: str = "bundled"

    @property
    def path(self) -> Path:
        return ASSETS / self.folder

    @property
    def files(self) -> dict[str, str]:
        return {"pipeline": f"assets/{self.folder}"}


def _shapes(family: str, what: str, default: bool = False, name: str | None = None) -> BundledEntry:
    """A model trained here on the shapes set (64px, 10 classes), shipped in ``assets/<name>`` (default
    ``shapes-<family>``)."""
    name = name or f"shapes-{family}"
    return BundledEntry(name=name, folder=name, image_size=64, family=family,
                        description=f"bundled{' default' if default else ''}: {what}, 64px, 10 classes")


BUNDLED: dict[str, BundledEntry] = {
    e.name: e
    for e in [
        _shapes("llamagen", "LlamaGen-style GPT + VQ trained on the shapes set", default=True),
        _shapes("var", "VAR-style next-scale transformer + multi-scale VQ-VAE trained on the shapes set"),
        _shapes("flowar", "FlowAR-style scale-wise flow-matching transformer + KL VAE trained on the shapes set"),
        _shapes("mar", "MAR-style masked transformer with a diffusion head + KL VAE trained on the shapes set"),
        _shapes("dd-llamagen", "1-2 step distilled-decoding student of shapes-llamagen", name="shapes-llamagen-dd"),
        _shapes("dd-var", "1-2 step distilled-decoding student of shapes-var", name="shapes-var-dd"),
        _shapes("mar", "a small MAR on shapes-mar's VAE, its draft for speculative decoding (--sampler cspd)",
                name="shapes-mar-draft"),
        BundledEntry(name="shapes-pixel", folder="shapes-pixel", image_size=32, family="igpt",
                     description="bundled: image-GPT-style pixel GPT over a 16-colour palette trained on the shapes "
                                 "set, 32px, 10 classes"),
        _shapes("elm", "ELM-style LM over a 16-bit binary autoencoder's bits as 2 sub-tokens, trained on the shapes "
                "set"),
    ]
}
DEFAULT_MODEL = "shapes-llamagen"


def list_models() -> list[ZooEntry | BundledEntry]:
    """Every named model, in the order ``argen models`` shows them: bundled first."""
    return [*BUNDLED.values(), *OFFICIAL.values()]


def known_names() -> list[str]:
    return [e.name for e in list_models()]


def load(
    name_or_dir: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    random_weights: bool = False,
) -> ARPipeline:
    """An :class:`ARPipeline` from a zoo name (official weights are downloaded when online, or taken
    from ``checkpoint_dir``, and converted on the fly) or from a folder written by ``save_pretrained``.
    ``random_weights``: an official model's architecture with seeded random weights, nothing
    downloaded (for speed benchmarks)."""
    path = Path(name_or_dir)
    if random_weights:
        entry = OFFICIAL.get(str(name_or_dir))
        if entry is None:
            raise UnknownModelError(f"random_weights needs an official model name; known: {', '.join(OFFICIAL)}")
        return _random_pipeline(entry, device, dtype)
    if path.is_dir():
        return ARPipeline.from_pretrained(path, device=device, dtype=dtype)
    name = str(name_or_dir)
    if name in BUNDLED:
        folder = BUNDLED[name].path
        if not (folder / INDEX_NAME).is_file():
            raise UnknownModelError(f"the bundled model {name!r} is missing from {folder} "
                                    "(set ARGEN_ASSETS to the assets folder)")
        return ARPipeline.from_pretrained(folder, device=device, dtype=dtype)
    entry = OFFICIAL.get(name)
    if entry is None:
        hint = f"; also not a folder with {INDEX_NAME}" if os.sep in name or name.startswith(".") else ""
        raise UnknownModelError(
            f"unknown model {name!r}{hint}. Known models: {', '.join(known_names())} "
            f"(or pass a folder written by save_pretrained / `argen convert`)"
        )
    family = get_family(entry.family)
    if family.load_official is None:
        raise ConfigError(f"the {family.name} family has no loader of official checkpoints")
    paths = {
        comp: resolve_file(entry.repos.get(comp, entry.repo_id), fname, checkpoint_dir=checkpoint_dir,
                           local_files_only=local_files_only, url=entry.urls.get(comp))
        for comp, fname in entry.files.items()
    }
    gen, tok = family.load_official(paths, entry.generator_args, entry.tokenizer_args, device, dtype)
    return ARPipeline(gen, tok, image_size=entry.image_size, defaults=entry.defaults, name=entry.name)


set_model_loader(load)
