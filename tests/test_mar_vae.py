"""MAR's KL-16 VAE reproduces the official outputs (tests/reference/fixtures/mar_vae_tiny), its
released layout loads strictly, and the diffusers AutoencoderKL wrapper follows the same protocol."""
import json

import pytest
import torch
from conftest import LAYOUTS, fixture_config, fixture_io, fixture_weights
from test_layouts import _meta_state

from argen.convert.checkpoint import load_into
from argen.convert.mar import load_vae
from argen.errors import CheckpointError, ConfigError
from argen.tokenizers import KLVAE, DiffusersVAE, KLConfig

ATOL, RTOL = 1e-5, 1e-4
# the official constructor arguments of the fixture; the attention placement is KLVAE's fixed one
TINY_ARGS = fixture_config("mar_vae_tiny", drop=("encoder_attn_resolutions", "decoder_attn_resolutions", "resolution"))


@pytest.fixture(scope="module")
def vae():
    return load_vae(fixture_weights("mar_vae_tiny"), **TINY_ARGS)


@pytest.fixture(scope="module")
def io():
    return fixture_io("mar_vae_tiny")


def test_fixture_posterior_and_decode(vae, io):
    with torch.no_grad():
        params = vae.posterior_parameters(io["image"])
        mean, std = vae.posterior(io["image"])
        latents = vae.encode(io["image"])
        images = vae.decode(latents)
        recon, _ = vae(io["image"], sample=False)
    torch.testing.assert_close(params, io["posterior_parameters"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(mean, io["posterior_mean"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(std, io["posterior_std"], atol=ATOL, rtol=RTOL)
    # MAR scales by 0.2325 before modelling and divides it out before decoding
    torch.testing.assert_close(latents, io["posterior_mean"] * 0.2325, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(images, io["decode_mean"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(recon, io["decode_mean"], atol=ATOL, rtol=RTOL)


def test_protocol(vae):
    assert vae.kind == "continuous" and vae.latent_channels == 4 and vae.downsample == 4
    assert vae.scaling_factor == 0.2325 == KLConfig().scaling_factor
    assert vae.latent_grid(16) == (4, 4) and vae.latent_grid((32, 16)) == (8, 4)
    with pytest.raises(ConfigError, match="multiple of"):
        vae.latent_grid(18)


def test_scaling_factor_is_a_config_option(vae, io):
    plain = KLVAE(KLConfig(**TINY_ARGS, scaling_factor=1.0))
    plain.load_state_dict(vae.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.encode(io["image"]), io["posterior_mean"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(plain.decode(io["posterior_mean"]), io["decode_mean"], atol=ATOL, rtol=RTOL)


def test_sampling_is_seeded_and_differs_from_the_mean(vae, io):
    with torch.no_grad():
        a = vae.encode(io["image"], sample=True, generator=torch.Generator().manual_seed(0))
        b = vae.encode(io["image"], sample=True, generator=torch.Generator().manual_seed(0))
        c = vae.encode(io["image"], sample=True, generator=torch.Generator().manual_seed(1))
        mean = vae.encode(io["image"])
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, mean)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    expected = (io["posterior_mean"] + io["posterior_std"] * noise) * 0.2325
    torch.testing.assert_close(a, expected, atol=ATOL, rtol=RTOL)


def test_training_forward_kl(vae, io):
    mean, std = io["posterior_mean"], io["posterior_std"]
    expected = 0.5 * (mean**2 + std**2 - 1 - torch.log(std**2)).sum(dim=(1, 2, 3)).mean()
    recon, losses = vae(io["image"], generator=torch.Generator().manual_seed(0))
    assert recon.shape == io["image"].shape and set(losses) == {"kl"}
    torch.testing.assert_close(losses["kl"], expected, atol=1e-4, rtol=RTOL)
    losses["kl"].backward()
    assert vae.quant_conv.weight.grad is not None
    vae.zero_grad(set_to_none=True)


def test_bad_input(vae, io):
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        vae.encode(io["image"][:, :1])
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        vae.encode(io["image"][0])
    with pytest.raises(ConfigError, match="multiple of"):
        vae.encode(io["image"][..., :14, :14])
    with pytest.raises(ConfigError, match="embed_dim=4"):
        vae.decode(torch.zeros(1, 16, 4, 4))
    with pytest.raises(ConfigError, match="norm_groups"):
        KLConfig(ch=24)
    with pytest.raises(ConfigError, match="double_z"):
        KLConfig(double_z=False)
    with pytest.raises(ConfigError, match="unknown KL VAE argument"):
        load_vae(fixture_weights("mar_vae_tiny"), ckpt_path="x", **TINY_ARGS)


def test_official_checkpoint_file(tmp_path, io):
    """A kl16.ckpt-style file: weights under "model" with training-only loss.* entries."""
    state = fixture_weights("mar_vae_tiny")
    extras = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(2, 3, 4, 4)}
    torch.save({"model": {**state, **extras}}, tmp_path / "kl.ckpt")
    vae = load_vae(tmp_path / "kl.ckpt", **TINY_ARGS)
    with torch.no_grad():
        torch.testing.assert_close(vae.posterior(io["image"])[0], io["posterior_mean"], atol=ATOL, rtol=RTOL)

    broken = {k: v for k, v in state.items() if k != "decoder.mid.attn_1.q.weight"}
    broken["decoder.up.0.attn.0.q.weight"] = torch.zeros(32, 32, 1, 1)
    torch.save({"model": broken}, tmp_path / "broken.ckpt")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): decoder\.mid\.attn_1\.q\.weight") as err:
        load_vae(tmp_path / "broken.ckpt", **TINY_ARGS)
    assert "unexpected keys (1): decoder.up.0.attn.0.q.weight" in str(err.value)


def test_kl16_layout_loads_strictly():
    layout = json.loads((LAYOUTS / "mar_vae_kl16.json").read_text())
    model = KLVAE.from_config(KLConfig.preset("kl16"), device="meta")
    load_into(model, _meta_state(layout), source="mar_vae_kl16")
    assert sum(p.numel() for p in model.parameters()) == layout["num_params"]
    assert model.latent_channels == 16 and model.latent_grid(256) == (16, 16)
    # the official file wrapping, with a training-only entry, through the converter
    wrapped = {"model": {**_meta_state(layout), "loss.logvar": torch.empty((), device="meta")}}
    assert isinstance(load_vae(wrapped, device="meta"), KLVAE)


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(
        block_out_channels=(32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )
    path = tmp_path_factory.mktemp("diffusers_vae")
    model.save_pretrained(path)
    return path


def test_diffusers_wrapper_round_trip(diffusers_dir, io):
    vae = DiffusersVAE.from_diffusers(diffusers_dir)
    s = vae.vae.config.scaling_factor
    assert vae.kind == "continuous" and vae.latent_channels == 4 and vae.downsample == 2
    assert vae.scaling_factor == s and vae.latent_grid(16) == (8, 8)
    x = io["image"]
    with torch.no_grad():
        dist = vae.vae.encode(x).latent_dist
        latents = vae.encode(x)
        torch.testing.assert_close(latents, dist.mean * s)
        torch.testing.assert_close(vae.decode(latents), vae.vae.decode(dist.mean).sample, atol=ATOL, rtol=RTOL)
        a = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
        b = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.allclose(a, latents)
    other = DiffusersVAE.from_diffusers(diffusers_dir, scaling_factor=1.0)
    with torch.no_grad():
        torch.testing.assert_close(other.encode(x), dist.mean)
    with pytest.raises(ConfigError, match="latents must be"):
        vae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="multiple of"):
        vae.encode(x[..., :15, :15])
    with pytest.raises(CheckpointError, match="not a diffusers AutoencoderKL"):
        DiffusersVAE.from_diffusers(diffusers_dir.parent)
