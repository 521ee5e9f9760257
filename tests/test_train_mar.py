"""Training MAR on shapes: a KL tokenizer (latent scale calibrated), then MAR on its continuous
tokens, through the CLI; the result loads and generates; a step reduces the loss."""
import json
import os
import subprocess
import sys

import pytest
import torch

import argen
from argen.data import ShapesDataset
from argen.tokenizers import KLVAE
from argen.train.tokenizer import tokenizer_config, vq_loss


def _run(*args):
    r = subprocess.run([sys.executable, "-m", "argen", *args], capture_output=True, text=True,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    return r


def test_kl_tokenizer_step_reduces_the_loss():
    torch.manual_seed(0)
    model = KLVAE(tokenizer_config("tiny", "kl"))
    ds = ShapesDataset(16)
    images = torch.stack([ds[i][0] for i in range(8)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.manual_seed(1)
    before, _, logs = vq_loss(model, images)
    assert set(logs) == {"rec", "kl"}
    before.backward()
    opt.step()
    torch.manual_seed(1)  # the same posterior noise as before the step
    with torch.no_grad():
        after, _, _ = vq_loss(model, images, kl_weight=1e-6)
    assert after < before


def test_train_kl_then_mar_with_the_cli(tmp_path):
    common = ["--resolution", "16", "--batch-size", "4", "--warmup-steps", "1", "--sample-every", "3",
              "--checkpoint-every", "3", "-q"]
    r = _run("train", "tokenizer", "--kind", "kl", "--steps", "3", "--out", str(tmp_path / "kl"), *common)
    assert r.returncode == 0, r.stderr
    tok = KLVAE.from_pretrained(tmp_path / "kl")
    assert tok.kind == "continuous" and tok.config.scaling_factor != 0.2325  # calibrated on held-out shapes
    r = _run("train", "generator", "--tokenizer", str(tmp_path / "kl"), "--steps", "3", "--out", str(tmp_path / "mar"),
             "--latents", "mean", "--config", "mask_ratio_dist=cosine", "mask_ratio_min=0", *common)
    assert r.returncode == 0, r.stderr
    state = json.loads((tmp_path / "mar" / "checkpoint" / "state.json").read_text())
    assert state["latents"] == "mean" and state["config"]["mask_ratio_dist"] == "cosine"
    pipe = argen.load(tmp_path / "mar")
    assert pipe.generator.kind == "continuous" and pipe.defaults["cfg_schedule"] == "linear"
    assert (tmp_path / "mar" / "samples" / "generator_000003.png").is_file()
    r = _run("generate", "--model", str(tmp_path / "mar"), "--classes", "star", "--num-iter", "2",
             "--diffusion-steps", "3", "--out", str(tmp_path / "g.png"), "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["forward_passes"] == 2
    r = _run("train", "generator", "--kind", "var", "--tokenizer", str(tmp_path / "kl"), "--steps", "1",
             "--out", str(tmp_path / "x"), *common)
    assert r.returncode != 0 and "multi-scale VQ tokenizer" in r.stderr and "mar-kl" in r.stderr
    r = _run("train", "tokenizer", "--kind", "kl", "--codebook-size", "8", "--steps", "1", "--out", str(tmp_path / "y"),
             *common)
    assert r.returncode != 0 and "--z-channels" in r.stderr


def test_train_flowar_on_a_kl_tokenizer_with_the_cli(tmp_path):
    common = ["--resolution", "16", "--batch-size", "4", "--warmup-steps", "1", "--sample-every", "2",
              "--checkpoint-every", "2", "-q"]
    r = _run("train", "tokenizer", "--kind", "kl", "--steps", "2", "--out", str(tmp_path / "kl"), *common)
    assert r.returncode == 0, r.stderr
    r = _run("train", "generator", "--kind", "flowar", "--tokenizer", str(tmp_path / "kl"), "--steps", "2",
             "--out", str(tmp_path / "flowar"), *common)
    assert r.returncode == 0, r.stderr
    pipe = argen.load(tmp_path / "flowar")
    assert pipe.generator.kind == "flow-scale" and pipe.generator.scales == [1, 2, 4]  # 16px / downsample 4
    assert pipe.defaults["upsample_size"] == 4
    images = pipe.generate(["star", "ring"], seed=0, output_type="pt", num_steps=4)
    assert images.shape == (2, 3, 16, 16)


@pytest.fixture(scope="module")
def diffusers_vae_dir(tmp_path_factory):
    """A tiny diffusers AutoencoderKL (downsample 2, 4 latent channels) with its own scaling factor."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                          sample_size=16, scaling_factor=0.5)
    path = tmp_path_factory.mktemp("diffusers_vae")
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind,passes", [("flowar", 4), ("mar", 2)])
def test_train_on_a_diffusers_vae_with_the_cli(tmp_path, diffusers_vae_dir, kind, passes):
    """Any diffusers AutoencoderKL is a continuous tokenizer: train on it, save, reload with its scaling."""
    from argen.tokenizers import DiffusersVAE

    common = ["--resolution", "16", "--batch-size", "4", "--warmup-steps", "1", "--sample-every", "2",
              "--checkpoint-every", "2", "-q"]
    r = _run("train", "generator", "--kind", kind, "--tokenizer", str(diffusers_vae_dir), "--steps", "2",
             "--out", str(tmp_path / kind), *common)
    assert r.returncode == 0, r.stderr
    pipe = argen.load(tmp_path / kind)
    tok = pipe.tokenizer
    assert isinstance(tok, DiffusersVAE) and tok.scaling_factor == 0.5 and tok.latent_channels == 4
    assert pipe.generator.latent_grid == (8, 8)  # 16px / downsample 2
    if kind == "flowar":
        assert pipe.generator.scales == [1, 2, 4, 8] and pipe.defaults["upsample_size"] == 8
    with torch.no_grad():  # the saved VAE is the same network: same latents for the same image
        x = torch.stack([ShapesDataset(16)[i][0] for i in range(2)])
        original = DiffusersVAE.from_diffusers(diffusers_vae_dir)
        torch.testing.assert_close(tok.encode(x), original.encode(x))
    opts = ["--num-steps", "2"] if kind == "flowar" else ["--num-iter", "2", "--diffusion-steps", "2"]
    r = _run("generate", "--model", str(tmp_path / kind), "--classes", "star", *opts, "--out", str(tmp_path / "g.png"),
             "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["forward_passes"] == passes


def test_train_generator_tokenizer_errors(tmp_path, diffusers_vae_dir):
    common = ["--resolution", "16", "--batch-size", "4", "--steps", "1", "-q"]
    r = _run("train", "generator", "--kind", "var", "--tokenizer", str(diffusers_vae_dir), "--out", str(tmp_path / "x"),
             *common)
    assert r.returncode != 0 and "multi-scale VQ tokenizer" in r.stderr and "'diffusers-vae'" in r.stderr
    r = _run("train", "generator", "--tokenizer", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y"), *common)
    assert r.returncode != 0 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = _run("train", "generator", "--tokenizer", "no-owner/no-vae", "--out", str(tmp_path / "z"), *common)
    assert r.returncode != 0 and "no such local folder" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("family", ["mar", "flowar"])
def test_small_preset_fits_the_bundle_budget(family):
    """A bundled checkpoint stays under about 20 MB (float16): the 'small' presets of the continuous
    families, on the shapes KL VAE's 8x8x8 latents, must fit before an hour is spent training one."""
    from argen.generators import MAR, FlowAR, FlowARConfig, MARConfig
    from argen.train.generator import generator_config

    geometry = dict(img_size=64, vae_stride=8, vae_embed_dim=8, class_num=10)
    args = generator_config("small", family)
    with torch.device("meta"):
        model = (MAR(MARConfig(**args, **geometry)) if family == "mar"
                 else FlowAR(FlowARConfig(**args, **geometry, scale=[1, 2, 4, 8])))
    assert 2 * sum(p.numel() for p in model.parameters()) < 20e6
