"""MAR's transformer, diffusion head, diffusion chains and sampler against the official fixture
(tests/reference/fixtures/mar_tiny.*), plus sampler behaviour on the tiny model."""
import math

import numpy as np
import pytest
import torch
from conftest import fixture_config, fixture_io, fixture_weights

import argen.samplers as S
from argen.errors import ConfigError
from argen.generators import MAR, MARConfig
from argen.nn.diffusion import GaussianDiffusion
from argen.samplers.mar import mask_lengths

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


def _first_step_eps_gain(chain: GaussianDiffusion) -> float:
    """How much the first reverse step's mean moves per unit of epsilon error: coef1 * sqrt(1/ab - 1)."""
    return float(chain.posterior_mean_coef1[-1] * chain.sqrt_recipm1_alphas_cumprod[-1])


def test_config_lists_the_official_arguments_then_argen_extensions():
    """MARConfig's fields are the official constructor's arguments in its order, then the fenced
    EXTENSIONS, all official by default; ``extensions_in_use`` names those a config turns on, and a saved
    config (flat JSON keys) loads unchanged."""
    import dataclasses
    import json
    from pathlib import Path

    official = list(fixture_config("mar_tiny"))
    names = [f.name for f in dataclasses.fields(MARConfig)]
    assert names == official + list(MARConfig.EXTENSIONS)
    assert MARConfig().extensions_in_use() == {}
    assert all(MARConfig.preset(n).extensions_in_use() == {} for n in ("mar_base", "mar_large", "mar_huge"))
    assert MARConfig(**fixture_config("mar_tiny")).extensions_in_use() == {}
    assert MARConfig(rope="2d", x0_loss_weight=0.5).extensions_in_use() == {"rope": "2d", "x0_loss_weight": 0.5}
    saved = json.loads((Path(__file__).parents[1] / "assets/shapes-mar/generator/config.json").read_text())
    cfg = MARConfig(**{k: v for k, v in saved.items() if k != "_class"})
    assert cfg.extensions_in_use() == {"noise_schedule": "linear", "pos_embed_init": "sincos", "rope": "2d",
                                       "mask_ratio_dist": "cosine", "attn_bias": "distance", "x0_loss_weight": 1.0}
    assert dataclasses.asdict(cfg) == {k: v for k, v in saved.items() if k != "_class"}


def test_noise_schedule_option():
    """Official MARs keep the cosine chain; 'linear' (the small training presets) avoids the cosine
    chain's huge first-step gain on epsilon errors, which made small heads sample noise."""
    assert MARConfig().noise_schedule == "cosine"
    with pytest.raises(ConfigError, match="unknown noise_schedule 'sigmoid'; known: cosine, linear"):
        MARConfig(noise_schedule="sigmoid")
    cosine = MAR(MARConfig(**fixture_config("mar_tiny")))
    linear = MAR(MARConfig(**{**fixture_config("mar_tiny"), "noise_schedule": "linear"}))
    assert cosine.diffloss.train_diffusion.betas[0] < linear.diffloss.train_diffusion.betas[0]
    np.testing.assert_allclose(linear.diffloss.train_diffusion.betas[[0, -1]], [1e-4, 0.02])
    assert _first_step_eps_gain(cosine.diffloss.chain(50)) > 100
    assert _first_step_eps_gain(linear.diffloss.chain(50)) < 1
    # the schedule is part of the saved config, so a reloaded model samples on its own chain
    assert MARConfig(**linear.config.__dict__).noise_schedule == "linear"


def test_pos_embed_init_option():
    """'sincos' (the small training presets) starts the token rows of all three position embeddings at
    MAE's 2D table; the buffer rows and the official default ('normal') keep N(0, 0.02)."""
    from argen.nn.position import sincos_2d

    assert MARConfig().pos_embed_init == "normal"
    with pytest.raises(ConfigError, match="unknown pos_embed_init 'rope'; known: normal, sincos"):
        MARConfig(pos_embed_init="rope")
    table = sincos_2d(3, 4, 8)
    assert table.shape == (12, 8) and len({tuple(r) for r in table.tolist()}) == 12  # every position differs
    grid = table.reshape(3, 4, 8)
    assert torch.equal(grid[:, :1, :4].expand(3, 4, 4), grid[..., :4])  # first half: the row only
    assert torch.equal(grid[:1, :, 4:].expand(3, 4, 4), grid[..., 4:])  # second half: the column only
    omega = torch.tensor([1.0, 0.01])  # 10000^(-k / 2) for dim 8: two frequencies per axis
    torch.testing.assert_close(grid[1, 2], torch.cat([omega.sin(), omega.cos(), (2 * omega).sin(), (2 * omega).cos()]))
    with pytest.raises(ConfigError, match="divisible by 4"):
        sincos_2d(2, 2, 6)
    cfg = {**fixture_config("mar_tiny"), "pos_embed_init": "sincos"}
    torch.manual_seed(0)
    model = MAR(MARConfig(**cfg))
    model.init_weights()
    n, g = model.seq_len, model.config.grid
    for p in (model.encoder_pos_embed_learned, model.decoder_pos_embed_learned, model.diffusion_pos_embed_learned):
        assert torch.equal(p[0, -n:], sincos_2d(g, g, p.shape[-1]))
    buffer = model.encoder_pos_embed_learned[0, :-n]
    assert buffer.abs().max() < 0.2 and buffer.std() > 0.01  # N(0, 0.02), untouched


def test_mask_ratio_dist_option():
    """Training masks: 'truncnorm' (official) never leaves more than 30% known; 'cosine' follows the
    sampler's cos(pi/2 u) law on [mask_ratio_min, 1], so most-known steps are trained too."""
    cfg = {**fixture_config("mar_tiny"), "img_size": 64, "vae_stride": 4}  # 16 x 16 = 256 tokens
    with pytest.raises(ConfigError, match="unknown mask_ratio_dist 'uniform'; known: truncnorm, cosine"):
        MARConfig(**cfg, mask_ratio_dist="uniform")
    with pytest.raises(ConfigError, match="mask_ratio_min must be in"):
        MARConfig(**{**cfg, "mask_ratio_min": 1.5})

    def masked_fractions(**kw):
        model = MAR(MARConfig(**{**cfg, **kw}))
        g = torch.Generator().manual_seed(0)
        fractions = []
        for _ in range(2000):
            mask = model.random_mask(model.random_orders(2, g), g)
            assert torch.equal(mask.sum(1), mask.sum(1)[:1].expand(2)) and set(mask.unique().tolist()) <= {0.0, 1.0}
            fractions.append(mask[0].mean().item())
        return torch.tensor(fractions)

    official = masked_fractions()
    assert official.min() >= 0.7 and official.max() == 1.0
    cosine = masked_fractions(mask_ratio_dist="cosine", mask_ratio_min=0.0)
    assert cosine.min() > 0  # at least one token to learn from
    for r in (0.25, 0.5, 0.9):  # P(cos(pi/2 u) <= r) = 1 - 2/pi acos(r); k = ceil(256 r) shifts it < 1/256
        expected = 1 - 2 / math.pi * math.acos(r)
        assert abs((cosine <= r).float().mean().item() - expected) < 0.035, r
    floored = masked_fractions(mask_ratio_dist="cosine", mask_ratio_min=0.5)
    assert floored.min() >= 0.5 and (floored < 0.75).float().mean() > 0.3


def test_raster_order_prob_trains_raster_prefixes():
    """raster_order_prob: that fraction of training rows keeps a raster prefix known (the sampler's
    order='raster' queries); 0 (official) draws exactly the official random orders."""
    cfg = {**fixture_config("mar_tiny"), "img_size": 64, "vae_stride": 4}  # 16 x 16 = 256 tokens
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="raster_order_prob must be in"):
            MARConfig(**cfg, raster_order_prob=bad)
    official = MAR(MARConfig(**cfg)).random_orders(3, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(official, torch.stack([torch.randperm(256, generator=g) for _ in range(3)]))

    model = MAR(MARConfig(**cfg, raster_order_prob=0.5))
    g = torch.Generator().manual_seed(1)
    rasters = 0
    for _ in range(200):
        orders = model.random_orders(4, g)
        mask = model.random_mask(orders, g)
        for row_order, row_mask in zip(orders, mask):
            if torch.equal(row_order, torch.arange(255, -1, -1)):
                known = int((row_mask == 0).sum())
                assert torch.equal(row_mask, (torch.arange(256) >= known).float())  # a raster prefix known
                rasters += 1
    assert abs(rasters / 800 - 0.5) < 0.06  # 4 sigma of a binomial(800, 0.5) share


def test_training_only_fields_may_differ_when_continuing(tmp_path):
    """--init-from continues a MAR under another training recipe (mask law, raster share) but refuses
    another architecture, naming the field."""
    from argen.errors import ConfigError as Err
    from argen.train.generator import init_weights_from

    cfg = fixture_config("mar_tiny")
    saved = MAR(MARConfig(**cfg))
    saved.save_pretrained(tmp_path / "gen")
    model = MAR(MARConfig(**{**cfg, "raster_order_prob": 0.5, "mask_ratio_min": 0.0, "mask_ratio_dist": "cosine"}))
    init_weights_from(model, tmp_path / "gen")
    for (name, a), b in zip(saved.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(Err, match="rope: saved 'none' vs now '2d'"):
        init_weights_from(MAR(MARConfig(**cfg, rope="2d")), tmp_path / "gen")


def test_distance_attention_bias():
    """attn_bias='distance': ALiBi slopes times the 2D grid distance between image tokens, no bias for
    the buffer; the encoder's bias follows each row's own known positions (rows mask different tokens)."""
    from argen.generators.mar import alibi_slopes, distance_bias

    with pytest.raises(ConfigError, match="unknown attn_bias 'rope'; known: none, distance"):
        MARConfig(**fixture_config("mar_tiny"), attn_bias="rope")
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([0.25, 0.0625, 0.015625, 0.00390625]))
    bias = distance_bias(torch.tensor([[-1, 0, 5, 3]]), grid=4, heads=4)  # buffer, (0,0), (1,1), (0,3)
    assert bias.shape == (1, 4, 4, 4)
    torch.testing.assert_close(bias[0, 0, 1, 2], torch.tensor(-0.25 * math.sqrt(2)))
    torch.testing.assert_close(bias[0, 1, 1, 3], torch.tensor(-0.0625 * 3))
    assert torch.equal(bias, bias.transpose(-1, -2))
    assert bias[0, :, 0].abs().max() == 0 and bias[0, :, :, 0].abs().max() == 0

    torch.manual_seed(0)
    cfg = fixture_config("mar_tiny")
    model = MAR(MARConfig(**cfg, attn_bias="distance")).eval()
    model.init_weights()
    plain = MAR(MARConfig(**cfg)).eval()
    plain.load_state_dict(model.state_dict())  # no new parameters: the same checkpoint either way
    n, dim = model.seq_len, model.token_dim
    tokens = torch.randn(3, n, dim)
    mask = torch.ones(3, n)
    for row, known in enumerate(([0, 1], [2, 15], [5, 10])):
        mask[row, known] = 0
    emb = model.class_emb(torch.tensor([1, 2, 3]))
    with torch.no_grad():
        z = model.conditions(tokens, mask, emb)
        for row in range(3):  # batched rows with different known positions = each row alone
            one = slice(row, row + 1)
            torch.testing.assert_close(z[one], model.conditions(tokens[one], mask[one], emb[one]))
        assert (z - plain.conditions(tokens, mask, emb)).abs().max() > 1e-3
        # without position embeddings only the bias tells masked slots apart
        for m in (model, plain):
            for p in (m.encoder_pos_embed_learned, m.decoder_pos_embed_learned, m.diffusion_pos_embed_learned):
                p.zero_()
        masked = mask[0].bool()
        z_plain = plain.conditions(tokens[:1], mask[:1], emb[:1])[0, masked]
        z_dist = model.conditions(tokens[:1], mask[:1], emb[:1])[0, masked]
    torch.testing.assert_close(z_plain, z_plain[:1].expand_as(z_plain))
    assert (z_dist - z_dist[:1]).abs().amax(-1)[1:].min() > 1e-4


def test_rope_2d_option():
    """rope='2d': scores depend on the grid offset between tokens (a head can single out the token above),
    the buffer is not rotated, batched rows with different known positions equal each row alone, and
    the checkpoint is the same (no parameters)."""
    from argen.generators.mar import rope_2d_rows

    with pytest.raises(ConfigError, match="unknown rope 'alibi'; known: none, 2d"):
        MARConfig(**fixture_config("mar_tiny"), rope="alibi")
    rows = rope_2d_rows(torch.tensor([[-1, 0, 5]]), grid=4, head_dim=8)
    assert rows.shape == (1, 3, 4, 2)
    torch.testing.assert_close(rows[0, 0], torch.tensor([[1.0, 0.0]] * 4))  # buffer: identity
    torch.testing.assert_close(rows[0, 1], torch.tensor([[1.0, 0.0]] * 4))  # (0, 0): angle 0
    # (1, 1): row pairs then column pairs, frequencies 1 and 1/100 for head_dim 8
    angles = torch.tensor([1.0, 0.01, 1.0, 0.01])
    torch.testing.assert_close(rows[0, 2], torch.stack([angles.cos(), angles.sin()], -1))
    # relative: q.k between rotated vectors depends only on the offset
    from argen.nn.rope import apply_rope
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    table = rope_2d_rows(torch.arange(16)[None], grid=4, head_dim=8)

    def score(a: int, b: int) -> torch.Tensor:
        return (apply_rope(q, table[:, a:a + 1]) * apply_rope(k, table[:, b:b + 1])).sum()

    torch.testing.assert_close(score(5, 1), score(10, 6))  # both: key one row above the query
    assert (score(5, 1) - score(5, 4)).abs() > 1e-4  # above vs left differ

    torch.manual_seed(0)
    cfg = fixture_config("mar_tiny")
    model = MAR(MARConfig(**cfg, rope="2d")).eval()
    model.init_weights()
    plain = MAR(MARConfig(**cfg)).eval()
    plain.load_state_dict(model.state_dict())
    tokens = torch.randn(2, model.seq_len, model.token_dim)
    mask = torch.ones(2, model.seq_len)
    mask[0, [0, 1]] = 0
    mask[1, [2, 15]] = 0
    emb = model.class_emb(torch.tensor([1, 2]))
    with torch.no_grad():
        z = model.conditions(tokens, mask, emb)
        for row in range(2):
            one = slice(row, row + 1)
            torch.testing.assert_close(z[one], model.conditions(tokens[one], mask[one], emb[one]))
        assert (z - plain.conditions(tokens, mask, emb)).abs().max() > 1e-3


def test_x0_loss_option():
    """x0_loss_weight > 0 adds a linear read-out of z trained by MSE on the masked tokens only; 0 (official)
    has no extra parameter, so official checkpoints still load strictly."""
    with pytest.raises(ConfigError, match="x0_loss_weight must be >= 0"):
        MARConfig(**fixture_config("mar_tiny"), x0_loss_weight=-1.0)
    cfg = fixture_config("mar_tiny")
    assert not any(k.startswith("x0_head") for k in MAR(MARConfig(**cfg)).state_dict())
    torch.manual_seed(0)
    cfg.update(mask_ratio_dist="cosine", mask_ratio_min=0.0)  # a partial mask: known tokens get no read-out loss
    model = MAR(MARConfig(**cfg, x0_loss_weight=2.0)).eval()  # eval: no label or weight dropout to replay
    model.init_weights()
    plain = MAR(MARConfig(**cfg)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("x0_head")})
    tokens = torch.randn(4, model.seq_len, model.token_dim)
    labels = torch.tensor([0, 1, 2, 3])
    loss = model(tokens, labels, generator=torch.Generator().manual_seed(3))
    base = plain(tokens, labels, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # replay the same mask to compute the read-out term by hand
    mask = model.random_mask(model.random_orders(4, g), g)
    assert 0 < mask.sum() < mask.numel()
    with torch.no_grad():
        err = ((model.x0_head(model.conditions(tokens, mask, model.class_emb(labels))) - tokens) ** 2).mean(-1)
        expected = base + 2.0 * (err * mask).sum() / mask.sum()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert model.x0_head.weight.grad.abs().sum() > 0

def test_patch_size_2_tokens_hold_a_2x2_latent_block_channels_outermost():
    """Fewer, larger tokens (the bundled shapes-mar): token (i, j) is the latent block rows 2i..2i+1,
    columns 2j..2j+1, laid out (c, p, q) as the official patchify; the 2D position terms follow the
    4x4 token grid, and sampling fills every token."""
    cfg = dict(fixture_config("mar_tiny"), vae_stride=8, patch_size=2, attn_bias="distance", rope="2d")
    model = MAR(MARConfig(**cfg)).eval()
    assert model.seq_len == 16 and model.config.grid == 4
    latents = torch.randn(2, 4, 8, 8)
    tokens = model.patchify(latents)
    assert tokens.shape == (2, 16, 16)
    i, j = 2, 1
    torch.testing.assert_close(tokens[:, i * 4 + j], latents[:, :, 2 * i: 2 * i + 2, 2 * j: 2 * j + 2].reshape(2, 16))
    torch.testing.assert_close(model.unpatchify(tokens), latents, atol=0, rtol=0)
    out, stats = S.sample(model, [1, 2], seed=0, num_iter=4, diffusion_steps=3)
    assert out.shape == (2, 16, 16) and torch.isfinite(out).all() and sum(stats.accepted_history) == 16
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        MARConfig(**dict(cfg, patch_size=3))


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


def test_raster_order_fills_a_growing_raster_prefix(mar_tiny):
    seen = []
    out, _ = S.sample(mar_tiny, [1, 2], seed=0, num_iter=5, diffusion_steps=2, order="raster",
                      callback=lambda step, tokens: seen.append((tokens != 0).all(-1).clone()))
    known = [int(k[0].sum()) for k in seen]
    assert known == [16 - left for left in mask_lengths(16, 5)[:-1]] + [16]
    for k in seen:  # the known tokens are the first ones in raster order, in every image
        count = int(k[0].sum())
        assert k[:, :count].all() and not k[:, count:].any()
    again, _ = S.sample(mar_tiny, [1, 2], seed=0, num_iter=5, diffusion_steps=2, order="raster")
    rand, _ = S.sample(mar_tiny, [1, 2], seed=0, num_iter=5, diffusion_steps=2)
    assert torch.equal(out, again) and not torch.equal(out, rand)
    with pytest.raises(ConfigError, match="unknown MAR generation order 'spiral'; known: random, raster"):
        S.sample(mar_tiny, [1], order="spiral")


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


@pytest.mark.parametrize("name", ["mar_base", "mar_large", "mar_huge"])
def test_released_layouts_load_strictly(name):
    import json

    from conftest import LAYOUTS

    from argen.convert.checkpoint import load_into

    layout = json.loads((LAYOUTS / f"{name}.json").read_text())
    model = MAR.from_config(MARConfig.preset(name), device="meta")
    load_into(model, {k: torch.empty(s, device="meta") for k, s in layout["tensors"].items()}, source=name)
    assert sum(p.numel() for p in model.parameters()) == layout["num_params"]


# -- official checkpoint files -> argen folder -> CLI ---------------------------------------------------
TINY_MAR_ARGS = {**fixture_config("mar_tiny"), "img_size": 16, "vae_stride": 4}  # the tiny VAE downsamples 4x


def _official_files(tmp_path):
    weights = fixture_weights("mar_tiny")
    ema = {k: v + 0.01 for k, v in weights.items()}  # EMA weights differ from the raw ones
    torch.save({"model": weights, "model_ema": ema, "epoch": 3}, tmp_path / "checkpoint-last.pth")
    vae = fixture_weights("mar_vae_tiny")
    torch.save({"model": {**vae, "loss.logvar": torch.zeros(())}}, tmp_path / "kl.ckpt")
    return weights, ema


def test_load_mar_takes_the_ema_weights_by_default(tmp_path):
    from argen.convert.mar import load_mar

    weights, ema = _official_files(tmp_path)
    m = load_mar(tmp_path / "checkpoint-last.pth", **TINY_MAR_ARGS)
    torch.testing.assert_close(m.fake_latent, ema["fake_latent"])
    raw = load_mar(tmp_path / "checkpoint-last.pth", weights="raw", **TINY_MAR_ARGS)
    torch.testing.assert_close(raw.fake_latent, weights["fake_latent"])
    torch.save({"model": weights}, tmp_path / "raw_only.pth")
    from argen.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no 'model_ema' entry; its keys: model.*weights='raw'"):
        load_mar(tmp_path / "raw_only.pth", **TINY_MAR_ARGS)
    with pytest.raises(ConfigError, match="preset"):
        load_mar(tmp_path / "checkpoint-last.pth")
    with pytest.raises(CheckpointError, match="diffloss.net.final_layer.linear.bias"):
        load_mar({"model_ema": {k: v for k, v in ema.items() if k != "diffloss.net.final_layer.linear.bias"}},
                 **TINY_MAR_ARGS)


def test_convert_and_generate_cli(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from PIL import Image

    _official_files(tmp_path)
    vae_cfg = fixture_config("mar_vae_tiny")
    vae_args = [f"--vae-arg={k}={json.dumps(vae_cfg[k])}" for k in ("embed_dim", "ch", "ch_mult", "num_res_blocks")]
    mar_args = [f"--mar-arg={k}={json.dumps(v)}" for k, v in TINY_MAR_ARGS.items()]
    out = tmp_path / "mar-tiny"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "argen", "convert", "mar",
                        "--mar-ckpt", str(tmp_path / "checkpoint-last.pth"), "--vae-ckpt", str(tmp_path / "kl.ckpt"),
                        *mar_args, *vae_args, "--out", str(out)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "argen", "generate", "-q", "--model", str(out), "--classes", "1", "2",
                        "--num-iter", "3", "--diffusion-steps", "4", "--cfg", "2.0", "--out", str(tmp_path / "g.png")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["forward_passes"] == 3 and report["classes"] == [1, 2]
    assert Image.open(tmp_path / "g.png").size == (2 * 16 + 3 * 2, 16 + 2 * 2)


def test_pipeline_decodes_tokens_through_the_vae(tmp_path):
    import argen
    from argen.convert.mar import load_mar, load_vae
    from argen.pipeline import ARPipeline

    _official_files(tmp_path)
    vae_cfg = fixture_config("mar_vae_tiny")
    vae = load_vae(tmp_path / "kl.ckpt", None,
                   **{k: vae_cfg[k] for k in ("embed_dim", "ch", "ch_mult", "num_res_blocks")})
    mar = load_mar(tmp_path / "checkpoint-last.pth", **TINY_MAR_ARGS)
    pipe = ARPipeline(mar, vae, defaults={"cfg_scale": 3.0, "num_iter": 2, "diffusion_steps": 3})
    images = pipe.generate([0, 5], seed=3, output_type="pt")
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1
    tokens = pipe.last_codes
    torch.testing.assert_close(images, vae.decode(mar.unpatchify(tokens)).clamp(-1, 1))
    pipe.save_pretrained(tmp_path / "saved")
    again = argen.load(tmp_path / "saved").generate([0, 5], seed=3, output_type="pt")
    torch.testing.assert_close(again, images)
    with pytest.raises(ConfigError, match="vae_embed_dim"):
        ARPipeline(MAR(MARConfig(**{**TINY_MAR_ARGS, "vae_embed_dim": 8})), vae)


def test_official_mar_offline_says_how_to_provide_the_files(tmp_path, monkeypatch):
    import argen
    from argen.errors import DownloadError

    monkeypatch.setenv("ARGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match=r"dropbox.*FOLDER/mar/mar_base/checkpoint-last.pth.*checkpoint_dir"):
        argen.load("mar-base")
    with pytest.raises(DownloadError, match="is not in"):
        argen.load("mar-base", checkpoint_dir=tmp_path, local_files_only=True)
