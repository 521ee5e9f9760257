"""MAR's transformer, diffusion head, diffusion chains and sampler against the official fixture
(../shared/reference/fixtures/mar_tiny.*), plus sampler behaviour on the tiny model."""
import math

import numpy as np
import pytest
import torch

import argen.samplers as S
from argen.errors import ConfigError
from argen.generators import MAR, MARConfig
from argen.nn.diffusion import GaussianDiffusion
from argen.samplers.mar import mask_lengths
from conftest import fixture_config, fixture_io, fixture_weights

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def mar_tiny():
    model = MAR(MARConfig(**fixture_config("mar_tiny")))
    model.load_state_dict(fixture_weights("mar_tiny"), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def io():
    return fixture_io("mar_tiny")


def test_patchify_round_trip(mar_tiny, io):
    tokens = mar_tiny.patchify(io["latents"])
    torch.testing.assert_close(tokens, io["tokens"], atol=0, rtol=0)
    torch.testing.assert_close(mar_tiny.unpatchify(tokens), io["unpatchify_tokens"], atol=0, rtol=0)


def test_encoder_decoder_outputs(mar_tiny, io):
    with torch.no_grad():
        emb = mar_tiny.class_emb(io["labels"])
        enc = mar_tiny.forward_mae_encoder(io["tokens"], io["mask"], emb)
        torch.testing.assert_close(enc, io["encoder_out"], atol=ATOL, rtol=RTOL)
        z = mar_tiny.forward_mae_decoder(enc, io["mask"])
        torch.testing.assert_close(z, io["decoder_z"], atol=ATOL, rtol=RTOL)
        both = torch.cat([emb, mar_tiny.class_embedding(None, 2)])
        z2 = mar_tiny.conditions(torch.cat([io["tokens"]] * 2), torch.cat([io["mask"]] * 2), both)
        torch.testing.assert_close(z2, io["decoder_z_cfg_batch"], atol=ATOL, rtol=RTOL)


def test_diffusion_mlp_and_cfg(mar_tiny, io):
    net = mar_tiny.diffloss.net
    with torch.no_grad():
        torch.testing.assert_close(net(io["mlp_x_t"], io["mlp_t"], io["mlp_c"]), io["mlp_out"], atol=ATOL, rtol=RTOL)
        out = net.forward_with_cfg(io["mlp_cfg_x"], io["mlp_cfg_t"], io["mlp_cfg_c"], 2.5)
        torch.testing.assert_close(out, io["mlp_cfg_out"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("which", ["gen", "train"])
def test_diffusion_schedules(mar_tiny, io, which):
    chain = mar_tiny.diffloss.chain() if which == "gen" else mar_tiny.diffloss.train_diffusion
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2"):
        ref = io[f"diffusion_{which}.{name}"].numpy()
        np.testing.assert_allclose(getattr(chain, name), ref, rtol=1e-12, atol=1e-15, err_msg=name)
    assert chain.timestep_map.tolist() == io[f"diffusion_{which}.timestep_map"].tolist()


def test_reverse_step_gaussian(mar_tiny, io):
    chain = mar_tiny.diffloss.chain()
    t = io["pmv_t_respaced"]
    with torch.no_grad():
        out = mar_tiny.diffloss.net(io["mlp_x_t"], chain.model_timesteps(t), io["mlp_c"])
        mean, log_var, x0 = chain.p_mean_variance(out, io["mlp_x_t"], t)
    torch.testing.assert_close(mean, io["pmv_mean"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(log_var, io["pmv_log_variance"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(x0, io["pmv_pred_xstart"], atol=ATOL, rtol=RTOL)
    # the head's step_gaussian is the same step, addressed by one chain index for all rows
    i = int(t[0])
    rows = t == i
    m2, lv2 = mar_tiny.diffloss.step_gaussian(io["mlp_x_t"][rows], i, io["mlp_c"][rows], None, chain)
    torch.testing.assert_close(m2, io["pmv_mean"][rows], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(lv2, io["pmv_log_variance"][rows], atol=ATOL, rtol=RTOL)


def test_respacing_matches_adm_for_mar_default():
    chain = GaussianDiffusion.cosine(1000).respaced(100)
    assert chain.timestep_map[0] == 0 and chain.timestep_map[-1] == 999 and len(chain.timestep_map) == 100
    with pytest.raises(ConfigError, match="sampling steps"):
        GaussianDiffusion.cosine(1000).respaced(0)


def test_mask_schedule():
    lens = mask_lengths(256, 64)
    assert len(lens) == 64 and lens[-1] == 1 and all(a > b for a, b in zip(lens, lens[1:-1]))
    assert lens[0] == math.floor(256 * math.cos(math.pi / 2 / 64))
    assert mask_lengths(16, 1) == [1]


def test_sampler_is_seeded_and_fills_every_token(mar_tiny):
    a, stats = S.sample(mar_tiny, [1, 2], seed=0, cfg_scale=3.0, num_iter=4, diffusion_steps=5)
    b, _ = S.sample(mar_tiny, [1, 2], seed=0, cfg_scale=3.0, num_iter=4, diffusion_steps=5)
    c, _ = S.sample(mar_tiny, [1, 2], seed=1, cfg_scale=3.0, num_iter=4, diffusion_steps=5)
    assert a.shape == (2, 16, 4) and torch.equal(a, b) and not torch.equal(a, c)
    assert (a != 0).all() and stats.forward_passes == 4 and sum(stats.accepted_history) == 16
    assert stats.guided_rows == 4


def test_sampler_guidance_changes_tokens_and_temperature_zero_is_deterministic_given_order(mar_tiny):
    a, _ = S.sample(mar_tiny, [3], seed=0, cfg_scale=1.0, num_iter=2, diffusion_steps=3)
    b, _ = S.sample(mar_tiny, [3], seed=0, cfg_scale=4.0, num_iter=2, diffusion_steps=3)
    assert not torch.allclose(a, b)
    c, _ = S.sample(mar_tiny, [3], seed=0, cfg_scale=4.0, num_iter=2, diffusion_steps=3, cfg_schedule="constant")
    assert not torch.allclose(b, c)


def test_sampler_bad_options(mar_tiny):
    with pytest.raises(ConfigError, match="num_iter"):
        S.sample(mar_tiny, [1], num_iter=17)
    with pytest.raises(ConfigError, match="top_k"):
        S.sample(mar_tiny, [1], top_k=5)
    with pytest.raises(ConfigError, match="diffusion_steps"):
        S.sample(mar_tiny, [1], num_iter=2, diffusion_steps=0)
    with pytest.raises(ConfigError, match="out of range"):
        S.sample(mar_tiny, [10])


def test_training_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = MAR(MARConfig(**fixture_config("mar_tiny")))
    model.init_weights()
    model.train()
    tokens, labels = torch.randn(4, 16, 4) * 0.5, torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(30):
        g = torch.Generator().manual_seed(step % 3)
        loss = model(tokens, labels, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6
