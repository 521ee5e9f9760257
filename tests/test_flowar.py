"""FlowAR's transformer, flow head, flow ODE and sampler against the official fixture
(tests/reference/fixtures/flowar_tiny.*), the released layouts, and checkpoint loading."""
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import FIXTURES, LAYOUTS, fixture_config, fixture_io, fixture_weights

import argen.samplers as S
from argen.convert.checkpoint import load_into
from argen.errors import CheckpointError, ConfigError
from argen.generators import FlowAR, FlowARConfig
from argen.generators.flowar import unpatchify
from argen.nn.flow import euler_integrate, flowar_time_grid, linear_time_grid
from argen.samplers.flowar import interval_guidance
from argen.samplers.logits import SamplingOptions, guide

ATOL, RTOL = 1e-5, 1e-4
SAMPLE_ATOL = 1e-4  # many Euler steps amplify float32 round-off
NAME = "flowar_tiny"
META = json.loads((FIXTURES / f"{NAME}.json").read_text())
TINY_ARGS = fixture_config(NAME, drop=("seq_len", "latent_hw"))


@pytest.fixture(scope="module")
def model():
    m = FlowAR(FlowARConfig(**TINY_ARGS))
    m.load_state_dict(fixture_weights(NAME), strict=True)
    return m.eval()


@pytest.fixture(scope="module")
def io():
    return fixture_io(NAME)


@pytest.fixture(scope="module")
def seg(model):
    assert model.config.segments == META["scale_segments"]
    return model.config.segments


def close(a, b, atol=ATOL):
    torch.testing.assert_close(a.to(b.dtype), b, atol=atol, rtol=RTOL)


# -- the AR transformer ------------------------------------------------------------------------------
def test_pyramid_and_teacher_inputs(model, io):
    targets = model.scale_targets(io["latents"])
    torch.testing.assert_close(torch.cat(targets, 1), io["tf_gt_tokens"], atol=0, rtol=0)
    torch.testing.assert_close(model.teacher_tokens(targets), io["tf_next_scale_inputs"], atol=0, rtol=0)


@pytest.mark.parametrize("prefix", ["tf", "tf_null"])
@torch.no_grad()
def test_teacher_forced_conditions(model, io, prefix):
    labels = io["labels"] if prefix == "tf" else model.null_condition(2)
    assert model.null_class == 1000 and model.class_emb.num_embeddings == 1001
    ada = model.class_embedding(labels)
    tokens = io[f"{prefix}_next_scale_inputs"]
    torch.testing.assert_close(model.encoder_input(tokens, ada), io[f"{prefix}_encoder_input"], atol=0, rtol=0)
    enc, z = model.transformer(tokens, ada)
    close(enc, io[f"{prefix}_encoder_output"])
    close(z, io[f"{prefix}_condition"])


@torch.no_grad()
def test_kv_cache_steps_match_teacher_forcing(model, io, seg):
    ada = model.class_embedding(io["labels"])
    cache = model.new_cache(2)
    zs = []
    for k in range(len(model.scales)):
        tokens = None if k == 0 else io["tf_next_scale_inputs"][:, seg[k] - 1 : seg[k + 1] - 1]
        zs.append(model.step(tokens, ada, cache))
    close(torch.cat(zs, 1), io["kv_condition"])
    close(torch.cat(zs, 1), io["tf_condition"])
    with pytest.raises(ConfigError, match="already"):
        model.step(None, ada, cache)


@pytest.mark.parametrize("side", [1, 2, 4])
def test_rope(model, io, side):
    rope = model.encoder_blocks[0].attn.rope
    torch.testing.assert_close(rope(io[f"rope_in_s{side}"], side), io[f"rope_out_s{side}"], atol=1e-6, rtol=1e-6)


# -- the flow head ----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 2])
@torch.no_grad()
def test_head_velocity(model, io, seg, k):
    s = model.scales[k]
    t = io[f"vel_t_s{s}"]
    assert torch.equal(model.flownet.timesteps(t), io[f"vel_tint_s{s}"])
    v = model.velocity(io[f"vel_x_s{s}"], t, io["tf_condition"][:, seg[k] : seg[k + 1]])
    close(v, io[f"vel_out_s{s}"])


@torch.no_grad()
def test_cfg_combined_velocity(model, io, seg):
    x, zc, zu = io["vel_x_s4"], io["tf_condition"][:, seg[2]:], io["tf_null_condition"][:, seg[2]:]
    v = model.velocity(torch.cat([x, x]), 0.5, torch.cat([zc, zu]))
    close(v[:2], io["cfg_vel_cond"])
    close(v[2:], io["cfg_vel_uncond"])
    vc, vu = v.double().chunk(2)
    close(guide(vc, vu, 2.5).float(), io["cfg_vel_combined_s2p5"], atol=2 * ATOL)


# -- the flow ODE -----------------------------------------------------------------------------------
def test_time_grids():
    g25 = flowar_time_grid(25)
    assert g25.dtype == torch.float64 and len(g25) == 25  # 24 Euler steps
    assert g25[11].item() == pytest.approx(0.3) and g25[12].item() == 0.25 and g25[-1].item() == 0.0
    assert torch.equal(flowar_time_grid(50), linear_time_grid(50)) and len(linear_time_grid(50)) == 51
    for bad in (1, 0, True, 2.5):
        with pytest.raises(ConfigError, match="flow steps"):
            flowar_time_grid(bad)


RUNS = {  # fixture name -> (steps, cfg, guidance_high, rows)
    "sampler_cfg_n25": (25, 3.0, 0.9, 4),
    "sampler_cfg_n50": (50, 2.0, 0.7, 4),
    "sampler_nocfg_n25": (25, 1.0, 0.9, 2),
    "sampler_cfg_n8_full_interval": (8, 3.0, 1.0, 4),
}


@pytest.mark.parametrize("name", list(RUNS))
@torch.no_grad()
def test_euler_sampler_matches_official(model, io, seg, name):
    steps, cfg, high, rows = RUNS[name]
    zc, zu = io["tf_condition"][:, seg[2]:], io["tf_null_condition"][:, seg[2]:]
    z = torch.cat([zc, zu]) if rows == 4 else zc
    seen, first = [], []

    def velocity(x, t):
        tt = torch.full((x.shape[0],), t, dtype=torch.float64).float()
        seen.append(tt[0])
        v = model.velocity(x.float(), tt, z)
        first.append(v) if not first else None
        return v.double()

    noise = io["sampler_noise"][:rows]
    out = euler_integrate(velocity, noise, flowar_time_grid(steps), guidance=interval_guidance(cfg, 0.0, high, 2))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, io[name], atol=SAMPLE_ATOL, rtol=RTOL)  # both halves, as the official
    torch.testing.assert_close(torch.stack(seen), io[f"{name}_t"], atol=0, rtol=0)
    assert torch.equal(model.flownet.timesteps(torch.stack(seen)), io[f"{name}_tint"])
    if name == "sampler_cfg_n25":  # t = 1 lies outside the interval: the plain 2B-row call
        close(first[0], io["sampler_cfg_n25_first_call_out"])


def test_diffusers_flow_match_scheduler_does_not_fit():
    """Why argen.nn.flow has its own loop: diffusers' float32 sigmas flip guidance-interval decisions."""
    diffusers = pytest.importorskip("diffusers")
    grid = flowar_time_grid(50)
    sch = diffusers.FlowMatchEulerDiscreteScheduler()
    sch.set_timesteps(sigmas=grid[:-1].tolist())
    assert torch.equal(sch.sigmas, grid.float())  # the grid itself is expressible ...
    official = grid[:-1] <= 0.8  # ... but the float64 times decide the interval differently
    assert not torch.equal(official, sch.sigmas[:-1].double() <= 0.8)


# -- full sampling --------------------------------------------------------------------------------------
GEN = {"gen_cfg": dict(cfg_scale=3.0, num_steps=25, guidance_high=0.9),
       "gen_cfg_n50": dict(cfg_scale=2.4, num_steps=50, guidance_high=0.7)}


@pytest.mark.parametrize("name", list(GEN))
@torch.no_grad()
def test_scale_inputs_and_conditions_from_official_samples(model, io, seg, name):
    samples, inputs = io[f"{name}_scale_samples"], io[f"{name}_next_scale_inputs"]
    ada = model.class_embedding(torch.cat([io["labels"], model.null_condition(2)]))
    cache = model.new_cache(4)
    for k, s in enumerate(model.scales):
        tokens = None if k == 0 else inputs[:, seg[k] - 1 : seg[k + 1] - 1]
        close(model.step(tokens, ada, cache), io[f"{name}_condition"][:, seg[k] : seg[k + 1]])
        if k + 1 < len(model.scales):  # the cond half, cast to float32, then upsampled to 16 as the official
            x = unpatchify(samples[:2, seg[k] : seg[k + 1]], s).float()
            nxt = model.next_scale_tokens(x, k + 1, upsample=16)
            torch.testing.assert_close(nxt, inputs[:2, seg[k + 1] - 1 : seg[k + 2] - 1], atol=0, rtol=0)


@pytest.mark.parametrize("name", list(GEN))
def test_sampling_reproduces_official_sample_tokens(model, io, seg, name):
    seed = META["seeds"][f"{name} torch.manual_seed"]
    opts = SamplingOptions(GEN[name]["cfg_scale"], cfg_schedule="linear")
    assert [opts.scale_at(k, 3) for k in range(3)] == META["cfg_per_scale_used_by_sample_tokens"][name]
    g = torch.Generator().manual_seed(seed)  # the official draws are its only use of the global RNG
    noise = torch.cat([torch.randn(4, s * s, 16, generator=g) for s in model.scales], 1)
    torch.testing.assert_close(noise, io[f"{name}_noise"], atol=0, rtol=0)
    per_scale = []
    tokens, stats = S.sample(model, io["labels"], seed=seed, callback=lambda k, t: per_scale.append(t), **GEN[name])
    assert tokens.shape == (2, 16, 16) and tokens.dtype == torch.float32
    torch.testing.assert_close(model.unpatchify(tokens), io[f"{name}_tokens"], atol=SAMPLE_ATOL, rtol=RTOL)
    for k, t in enumerate(per_scale):
        torch.testing.assert_close(t.double(), io[f"{name}_scale_samples"][:2, seg[k] : seg[k + 1]],
                                   atol=SAMPLE_ATOL, rtol=RTOL)
    steps = len(flowar_time_grid(GEN[name]["num_steps"])) - 1
    assert stats.forward_passes == 3 and stats.accepted_history == [1.0, 4.0, 16.0]
    assert stats.head_evaluations == 3 * steps and stats.guided_rows == 4 and stats.seed == seed


def test_sampler_seeds_and_unguided(model):
    a, _ = S.sample(model, [1, 2], seed=0, cfg_scale=2.0, num_steps=4)
    b, _ = S.sample(model, [1, 2], seed=0, cfg_scale=2.0, num_steps=4)
    c, _ = S.sample(model, [1, 2], seed=1, cfg_scale=2.0, num_steps=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    d, stats = S.sample(model, [1, 2], seed=0, num_steps=4)  # cfg 1: the official crashes, argen runs B rows
    assert stats.guided_rows == 2 and d.shape == a.shape and not torch.allclose(a, d)
    e, _ = S.sample(model, [1, 2], seed=0, cfg_scale=2.0, num_steps=4, cfg_schedule="constant")
    assert not torch.allclose(a, e)  # constant guidance also guides the first scale


def test_sampler_bad_options(model):
    for kw, match in ((dict(top_k=5), "top_k"), (dict(temperature=0.5), "temperature"),
                      (dict(num_steps=1), "flow steps"), (dict(guidance_low=0.5, guidance_high=0.2), "guidance_low"),
                      (dict(upsample_size=0), "upsample_size"),
                      (dict(cfg_schedule="var"), "cfg_schedule"), (dict(classes=[10]), "out of range")):
        kw = {"classes": [1], **kw}
        with pytest.raises(ConfigError, match=match):
            S.sample(model, kw.pop("classes"), **kw)
    assert "ar" in S.samplers_for(model)


# -- training ---------------------------------------------------------------------------------------------
def test_training_loss_matches_official_seeded_loss(io):
    m = FlowAR(FlowARConfig(**{**TINY_ARGS, "label_drop_prob": 0.0}))
    m.load_state_dict(fixture_weights(NAME), strict=True)
    m.train()
    loss = m(io["latents"], io["labels"], generator=torch.Generator().manual_seed(1234))
    torch.testing.assert_close(loss.detach().reshape(1), io["train_loss_seed1234"], atol=ATOL, rtol=RTOL)
    loss.backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if not n.startswith("class_emb"))


def test_init_weights_zero_head_output():
    torch.manual_seed(0)
    m = FlowAR(FlowARConfig(**TINY_ARGS))
    m.init_weights()
    v = m.velocity(torch.randn(2, 4, 16), 0.5, torch.randn(2, 4, 64))
    assert torch.equal(v, torch.zeros_like(v))


# -- configuration errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, match", [
    (dict(scale=[1, 2, 3]), "double"),
    (dict(scale=[2, 4]), "start at 1"),
    (dict(scale=[1, 2]), "latent size 4"),
    (dict(img_size=60), "multiple of vae_stride"),
    (dict(buffer_size=64), "buffer_size"),
    (dict(patch_size=2), "patch_size"),
    (dict(decoder_embed_dim=96, decoder_num_heads=4), "decoder_embed_dim"),
    (dict(diffloss_w=32), "diffloss_w"),
])
def test_bad_configs(overrides, match):
    with pytest.raises(ConfigError, match=match):
        FlowARConfig(**{**TINY_ARGS, **overrides})


def test_bad_latents_and_vae(model, io):
    with pytest.raises(ConfigError, match="img_size 64 / vae_stride 16"):
        model(torch.zeros(2, 16, 8, 8), io["labels"])
    vae = SimpleNamespace(latent_channels=16, latent_grid=lambda size: (size // 8, size // 8))
    with pytest.raises(ConfigError, match="latent grid"):
        model.check_tokenizer(vae)
    with pytest.raises(ConfigError, match="channels"):
        model.check_tokenizer(SimpleNamespace(latent_channels=32, latent_grid=lambda size: (4, 4)))
    model.check_tokenizer(SimpleNamespace(latent_channels=16, latent_grid=lambda size: (size // 16, size // 16)))


# -- released layouts and official files ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["flowar_small", "flowar_large", "flowar_huge"])
def test_released_layouts_load_strictly(name):
    layout = json.loads((LAYOUTS / f"{name}.json").read_text())
    model = FlowAR.from_config(FlowARConfig.preset(name), device="meta")
    load_into(model, {k: torch.empty(s, device="meta") for k, s in layout["tensors"].items()}, source=name)
    assert sum(p.numel() for p in model.parameters()) == layout["num_params"]
    assert sum(p.numel() for p in model.flownet.parameters()) == layout["derived"]["num_params_flow_head"]


def test_load_flowar_flat_and_training_checkpoints(tmp_path, io):
    from argen.convert.flowar import load_flowar

    weights = fixture_weights(NAME)
    torch.save(weights, tmp_path / "FlowAR-T.pth")  # the release format: a flat state dict
    m = load_flowar(tmp_path / "FlowAR-T.pth", **TINY_ARGS)
    torch.testing.assert_close(m.class_emb.weight, weights["class_emb.weight"])
    torch.testing.assert_close(m.mask, weights["mask"])
    ema = {k: v + 0.01 if v.is_floating_point() and k != "mask" else v for k, v in weights.items()}
    torch.save({"model": weights, "model_ema": ema, "epoch": 3}, tmp_path / "checkpoint-last.pth")
    live = load_flowar(tmp_path / "checkpoint-last.pth", **TINY_ARGS)
    torch.testing.assert_close(live.z_proj.bias, weights["z_proj.bias"])
    avg = load_flowar(tmp_path / "checkpoint-last.pth", weights="ema", **TINY_ARGS)
    torch.testing.assert_close(avg.z_proj.bias, ema["z_proj.bias"])
    with pytest.raises(CheckpointError, match="flat state dict"):
        load_flowar(tmp_path / "FlowAR-T.pth", weights="ema", **TINY_ARGS)
    with pytest.raises(ConfigError, match="preset"):
        load_flowar(tmp_path / "FlowAR-T.pth")
    with pytest.raises(CheckpointError, match="flownet.final_layer.linear.bias"):
        load_flowar({k: v for k, v in weights.items() if k != "flownet.final_layer.linear.bias"}, **TINY_ARGS)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_flowar(weights, "flowar_small")


def test_cross_attention_head_runs_and_caches_like_teacher_forcing():
    """FlowAR-L/H's head (Block_v2; no numeric fixture here): shapes, training loss, KV path."""
    torch.manual_seed(0)
    cfg = FlowARConfig(**{**TINY_ARGS, "cross": True, "diffloss_w": 64, "decoder_depth": 1})
    m = FlowAR(cfg).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    assert any(k.endswith("crossattn.kv.weight") for k in m.state_dict())
    latents, labels = torch.randn(2, 16, 4, 4), torch.tensor([1, 2])
    with torch.no_grad():
        targets = m.scale_targets(latents)
        _, z = m.transformer(m.teacher_tokens(targets), m.class_embedding(labels))
        cache, ada, seg = m.new_cache(2), m.class_embedding(labels), cfg.segments
        tokens = m.teacher_tokens(targets)
        zs = [m.step(None if k == 0 else tokens[:, seg[k] - 1 : seg[k + 1] - 1], ada, cache) for k in range(3)]
        close(torch.cat(zs, 1), z)
        assert m.velocity(targets[2], 0.3, z[:, seg[2]:]).shape == (2, 16, 16)
    assert torch.isfinite(m.train()(latents, labels, generator=torch.Generator().manual_seed(0)))
    tokens, _ = S.sample(m.eval(), [1, 2], seed=0, cfg_scale=2.0, num_steps=4)
    assert tokens.shape == (2, 16, 16) and torch.isfinite(tokens).all()


def test_convert_and_generate_cli(tmp_path):
    """Official FlowAR file + a KL VAE -> `argen convert flowar` -> `argen generate` end to end."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from argen.tokenizers import KLVAE, KLConfig

    torch.save(fixture_weights("flowar_tiny"), tmp_path / "FlowAR-T.pth")  # the release format: a flat state dict
    vae_args = dict(embed_dim=16, ch=16, ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1, norm_groups=8)  # 64px -> 4x4x16
    torch.manual_seed(0)
    torch.save({"model": KLVAE(KLConfig(**vae_args)).state_dict()}, tmp_path / "kl.ckpt")
    flowar_args = [f"--flowar-arg={k}={json.dumps(v)}"
                   for k, v in fixture_config("flowar_tiny", drop=("seq_len", "latent_hw")).items()]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = tmp_path / "flowar-tiny"
    r = subprocess.run([sys.executable, "-m", "argen", "convert", "flowar",
                        "--flowar-ckpt", str(tmp_path / "FlowAR-T.pth"),
                        "--vae-ckpt", str(tmp_path / "kl.ckpt"), *flowar_args,
                        *[f"--vae-arg={k}={json.dumps(v)}" for k, v in vae_args.items()], "--out", str(out)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "argen", "generate", "-q", "--model", str(out), "--classes", "3", "7",
                        "--num-steps", "4", "--cfg", "3.0", "--out", str(tmp_path / "g.png")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["forward_passes"] == 3 and report["head_evaluations"] > 0
    assert Image.open(tmp_path / "g.png").size == (2 * 64 + 3 * 2, 64 + 2 * 2)
