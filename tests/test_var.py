"""VAR: the multi-scale VQ-VAE and the transformer reproduce the official outputs recorded in
tests/reference/fixtures (var_tiny, var_tiny_saln, var_tiny_vqvae); every released layout loads;
the scale sampler's KV-cache inference equals teacher forcing; bad input gets clear errors."""
import json

import pytest
import torch
from conftest import FIXTURES, LAYOUTS, fixture_io, fixture_weights, reference_layouts

import argen.samplers as S
from argen.convert.checkpoint import load_into
from argen.convert.var import load_var, load_var_vae
from argen.errors import ConfigError
from argen.generators.var import VAR, VARConfig
from argen.tokenizers.msvq import MultiScaleVQConfig, MultiScaleVQVAE

ATOL, RTOL = 1e-5, 1e-4
RUNS = {  # fixture call -> argen sampling options
    "infer_greedy_cfg4": dict(cfg_scale=4.0, top_k=1),
    "infer_greedy_cfg1": dict(cfg_scale=1.0, top_k=1),
    "infer_greedy_cfg0": dict(cfg_scale=0.0, top_k=1),
    "infer_sampled_seed0_cfg1.5": dict(cfg_scale=1.5, top_k=10, top_p=0.96, seed=0),
}


def _config(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())["config"]


@pytest.fixture(scope="module")
def vae():
    cfg = {k: v for k, v in _config("var_tiny")["vae"].items() if k != "image_size"}
    return load_var_vae(fixture_weights("var_tiny_vqvae"), **cfg)


@pytest.fixture(scope="module", params=["var_tiny", "var_tiny_saln"])
def var_case(request, vae):
    name = request.param
    model = load_var(fixture_weights(name), vae=vae, drop_path_rate=0.0, **_config(name)["var"])
    return name, model, fixture_io(name)


@pytest.fixture(scope="module")
def vae_io():
    return fixture_io("var_tiny")


def test_vae_encode_per_scale(vae, vae_io):
    with torch.no_grad():
        codes = vae.encode(vae_io["image"])
        latents = vae.encode_latents(vae_io["image"])
    assert [tuple(c.shape) for c in codes] == [(2, p, p) for p in (1, 2, 3, 4)]
    for i, c in enumerate(codes):
        assert c.dtype == torch.int64 and torch.equal(c.flatten(1), vae_io[f"img_to_idxBl.{i}"])
    torch.testing.assert_close(latents, vae_io["encoder_quant_conv_f"], atol=ATOL, rtol=RTOL)
    flat = vae.flatten_codes(codes)
    assert flat.shape == (2, 30) and all(torch.equal(a, b) for a, b in zip(vae.split_codes(flat), codes))


def test_vae_decode_last_and_all_scales(vae, vae_io):
    codes = [vae_io[f"img_to_idxBl.{i}"] for i in range(4)]
    with torch.no_grad():
        last = vae.decode(codes)
        every = vae.decode(codes, all_scales=True)
        recon = vae.reconstruct(vae_io["image"])
        flat = vae.decode(torch.cat(codes, dim=1))
    torch.testing.assert_close(last, vae_io["idxBl_to_img_last"], atol=ATOL, rtol=RTOL)
    for i, img in enumerate(every):
        torch.testing.assert_close(img, vae_io[f"idxBl_to_img_all.{i}"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(recon, vae_io["img_to_reconstructed_img_last"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(flat, last)


def test_vae_teacher_forcing_input(vae, vae_io):
    codes = [vae_io[f"img_to_idxBl.{i}"] for i in range(4)]
    with torch.no_grad():
        feats = vae.teacher_forcing_input(codes)
    torch.testing.assert_close(feats, vae_io["var_input_BLCv_wo_first_l"], atol=ATOL, rtol=RTOL)


def test_teacher_forced_logits(var_case):
    _, model, io = var_case
    codes = [io[f"img_to_idxBl.{i}"] for i in range(4)]
    with torch.no_grad():
        logits = model(codes, io["labels"])
        null = model(codes, model.null_condition(2))
        from_feats = model(io["var_input_BLCv_wo_first_l"], io["labels"])
    assert logits.shape == (2, 30, 64)
    torch.testing.assert_close(logits, io["logits_teacher_forced"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(null, io["logits_teacher_forced_null_class"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(from_feats, logits)


@pytest.mark.parametrize("run", sorted(RUNS))
def test_inference_ids_images_and_guided_logits(var_case, run):
    """Sampled ids equal the official ones (greedy, and seeded); the image too; and the per-scale
    guided logits, recomputed by teacher forcing on the generated codes, equal the official ones:
    KV-cache inference = teacher forcing."""
    _, model, io = var_case
    codes, stats = S.sample(model, io["labels"], **RUNS[run])
    assert torch.equal(codes, io[f"{run}.ids"])
    assert stats.forward_passes == 4 and stats.tokens_per_pass == 30 / 4
    with torch.no_grad():
        image = model.tokenizer.decode(codes).add(1).mul(0.5)
        cond = model(codes, io["labels"])
        uncond = model(codes, model.null_condition(2))
    torch.testing.assert_close(image, io[f"{run}.image"], atol=ATOL, rtol=RTOL)
    cfg = RUNS[run]["cfg_scale"]
    t = torch.cat([torch.full((p * p,), cfg * k / 3) for k, p in enumerate((1, 2, 3, 4))]).view(1, -1, 1)
    torch.testing.assert_close((1 + t) * cond - t * uncond, io[f"{run}.guided_logits"], atol=1e-4, rtol=1e-4)


def test_adaln_modulations_are_computed_once_per_sampling_run(var_case):
    """The AdaLN projections depend on the class only: one call per block and run, not per scale (each
    call reads the whole (C, 6C) weight; per scale that was about 7% of a VAR-d16 generation on the CPU)."""
    _, model, io = var_case
    calls: list[str] = []
    hooks = [m.register_forward_hook(lambda *_: calls.append("ada")) for m in (
        *(blk.ada_lin for blk in model.blocks if not blk.shared), model.head_nm.ada_lin)]
    try:
        S.sample(model, io["labels"], seed=0, cfg_scale=1.5)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == len(hooks) and len(model.patch_nums) > 1


def test_var_top_p_rule_differs_from_hf_at_the_boundary():
    from argen.samplers.logits import top_p_filter

    logits = torch.tensor([[2.0, 1.0, 1.0]]).log()  # probabilities exactly 0.5, 0.25, 0.25
    # HF keeps the token whose preceding mass equals p; VAR removes ascending mass <= 1 - p
    assert torch.isinf(top_p_filter(logits, 0.5, "hf")).tolist() == [[False, False, True]]
    assert torch.isinf(top_p_filter(logits, 0.5, "var")).tolist() == [[False, True, True]]
    assert not torch.isinf(top_p_filter(logits, 0.9, "var")).any()


LAYOUT_PRESETS = {"var_d16": "d16", "var_d20": "d20", "var_d24": "d24", "var_d30": "d30", "var_d36": "d36"}


def _meta_state(layout: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in layout["tensors"].items()}


def test_every_var_layout_is_covered():
    assert reference_layouts("var_*.json") == set(LAYOUT_PRESETS) | {"var_vqvae"}


@pytest.mark.parametrize("name", sorted(LAYOUT_PRESETS))
def test_var_layout_loads_strictly(name):
    layout = json.loads((LAYOUTS / f"{name}.json").read_text())
    model = VAR.from_config(VARConfig.preset(LAYOUT_PRESETS[name]), device="meta")
    load_into(model, _meta_state(layout), source=name)
    assert sum(p.numel() for p in model.parameters()) == layout["num_params"]
    assert model.seq_len == layout["derived"]["L"]


def test_var_vqvae_layout_loads_strictly():
    layout = json.loads((LAYOUTS / "var_vqvae.json").read_text())
    model = MultiScaleVQVAE.from_config(MultiScaleVQConfig.preset("vae_ch160v4096z32"), device="meta")
    load_into(model, _meta_state(layout), source="var_vqvae")
    assert sum(p.numel() for p in model.parameters()) == layout["num_params"]


def test_bad_input(vae, var_case):
    _, model, io = var_case
    with pytest.raises(ConfigError, match="v_patch_nums end at 3"):
        MultiScaleVQVAE(MultiScaleVQConfig(**{**vae.config.__dict__, "v_patch_nums": [1, 2, 3]})).encode(io["image"])
    with pytest.raises(ConfigError, match="must grow strictly"):
        MultiScaleVQConfig(v_patch_nums=[1, 3, 2])
    other = MultiScaleVQVAE(MultiScaleVQConfig(**{**vae.config.__dict__, "vocab_size": 32}))
    with pytest.raises(ConfigError, match="vocab 32 vs the model's 64"):
        VAR(model.config).bind_tokenizer(other)
    with pytest.raises(ConfigError, match="no VQ-VAE bound"):
        VAR(model.config)([io[f"img_to_idxBl.{i}"] for i in range(4)], io["labels"])
    with pytest.raises(ConfigError, match=r"class id\(s\) \[10\] out of range"):
        S.sample(model, [1, 10])
    with pytest.raises(ConfigError, match="code ids must lie in"):
        vae.decode([torch.full((1, p, p), 64) for p in (1, 2, 3, 4)])
    with pytest.raises(ConfigError, match="codes 16x16 images"):
        vae.encode(torch.zeros(1, 3, 32, 32))


def test_load_var_takes_vocab_cvae_and_scales_from_the_vae(vae):
    """As the official build_vae_var: the VQ-VAE fixes V, Cvae (and the scales unless given); a contradicting
    explicit value is an error naming both."""
    args = {k: v for k, v in _config("var_tiny")["var"].items() if k != "patch_nums"}
    model = load_var(fixture_weights("var_tiny"), vae=vae, **args)
    assert (model.config.vocab_size, model.config.Cvae, model.config.patch_nums) == (64, 8, [1, 2, 3, 4])
    with pytest.raises(ConfigError, match=r"vocab_size=4096 but the VQ-VAE has 64"):
        load_var(fixture_weights("var_tiny"), vae=vae, vocab_size=4096, **args)
    with pytest.raises(ConfigError, match=r"Cvae=32 but the VQ-VAE has 8"):
        load_var(fixture_weights("var_tiny"), vae=vae, Cvae=32, **args)
    with pytest.raises(ConfigError, match=r"patch_nums=\[1, 2, 4\] but the VQ-VAE has \[1, 2, 3, 4\]"):
        load_var(fixture_weights("var_tiny"), vae=vae, patch_nums=[1, 2, 4], **args)


@pytest.fixture(scope="module")
def var_official_files(tmp_path_factory):
    """The tiny fixture weights written as official flat .pth state dicts, plus their configs."""
    d = tmp_path_factory.mktemp("var_official")
    torch.save(fixture_weights("var_tiny"), d / "var.pth")
    torch.save(fixture_weights("var_tiny_vqvae"), d / "vae.pth")
    cfg = _config("var_tiny")
    (d / "var.json").write_text(json.dumps({**cfg["var"], "vocab_size": 64, "Cvae": 8, "drop_path_rate": 0.0}))
    (d / "vae.json").write_text(json.dumps({k: v for k, v in cfg["vae"].items() if k != "image_size"}))
    return d


def test_pipeline_zoo_entry_save_and_load(var_official_files, monkeypatch, tmp_path):
    import argen
    from argen import zoo

    d = var_official_files
    entry = zoo.ZooEntry(
        name="var-tiny-test", family="var", description="test", image_size=16, repo_id="FoundationVision/var",
        files={"generator": "var.pth", "tokenizer": "vae.pth"},
        generator_args=json.loads((d / "var.json").read_text()),
        tokenizer_args=json.loads((d / "vae.json").read_text()), defaults={"cfg_scale": 4.0, "top_k": 1},
    )
    monkeypatch.setitem(zoo.OFFICIAL, entry.name, entry)
    pipe = argen.load(entry.name, checkpoint_dir=d)
    io = fixture_io("var_tiny")
    codes = pipe.generate(io["labels"].tolist(), output_type="codes")
    assert torch.equal(codes, io["infer_greedy_cfg4.ids"])
    images = pipe.generate(io["labels"].tolist(), output_type="pt")
    torch.testing.assert_close(images.add(1).mul(0.5), io["infer_greedy_cfg4.image"], atol=ATOL, rtol=RTOL)
    assert pipe.last_stats.forward_passes == 4
    pipe.save_pretrained(tmp_path / "saved")
    again = argen.load(tmp_path / "saved")
    assert torch.equal(again.generate(io["labels"].tolist(), output_type="codes"), codes)
    pil = again.generate([0, 1, 2], seed=1, cfg_scale=1.5, top_k=20)
    assert len(pil) == 3 and pil[0].size == (16, 16)


def test_cli_convert_var_then_generate(var_official_files, tmp_path):
    from test_cli import run_cli

    d = var_official_files
    out = tmp_path / "tiny-var"
    r = run_cli("convert", "var", "--var-ckpt", d / "var.pth", "--vae-ckpt", d / "vae.pth",
                "--var-config", d / "var.json", "--vae-config", d / "vae.json", "--out", out)
    assert r.returncode == 0, r.stderr
    r = run_cli("generate", "--model", out, "--classes", "3", "7", "-n", "2", "--seed", "0", "--out",
                tmp_path / "grid.png", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["images"] == 4
    r = run_cli("convert", "var", "--var-ckpt", d / "vae.pth", "--vae-ckpt", d / "vae.pth",
                "--var-config", d / "var.json", "--vae-config", d / "vae.json", "--out", tmp_path / "bad")
    assert r.returncode == 2 and "missing keys" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_multiscale_training_steps_reduce_the_losses():
    from test_train import _batch

    from argen.train.generator import generator_config, next_token_loss
    from argen.train.tokenizer import patch_nums_for, tokenizer_config, vq_loss

    torch.manual_seed(0)
    cfg = tokenizer_config("tiny", "multiscale", resolution=16)
    assert cfg.v_patch_nums == [1, 2, 3, 4] and patch_nums_for(16) == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    vae = MultiScaleVQVAE(cfg)
    images, labels = _batch()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    before, _, _ = vq_loss(vae, images)
    before.backward()
    opt.step()
    with torch.no_grad():
        after, _, _ = vq_loss(vae, images)
    assert after < before
    model = VAR(VARConfig(**generator_config("tiny", "var"), vocab_size=cfg.vocab_size, num_classes=10,
                          Cvae=cfg.z_channels, patch_nums=cfg.v_patch_nums))
    model.init_weights()
    model.bind_tokenizer(vae.eval()).eval()
    with torch.no_grad():
        codes = vae.flatten_codes(vae.encode(images))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = next_token_loss(model, codes, labels)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = next_token_loss(model, codes, labels)
    assert after < before


def test_cli_trains_a_var_on_shapes(tmp_path):
    from test_cli import run_cli

    common = ["--resolution", "16", "--steps", "3", "--batch-size", "4", "--warmup-steps", "1",
              "--sample-every", "3", "--checkpoint-every", "3", "-q"]
    r = run_cli("train", "tokenizer", "--kind", "multiscale", "--preset", "tiny", "--out", tmp_path / "msvq", *common)
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "generator", "--kind", "llamagen", "--tokenizer", tmp_path / "msvq", "--out", tmp_path / "x",
                *common)
    assert r.returncode == 2 and "--kind llamagen needs a VQ tokenizer" in r.stderr
    r = run_cli("train", "generator", "--kind", "var", "--tokenizer", tmp_path / "msvq", "--preset", "tiny",
                "--out", tmp_path / "var", *common)
    assert r.returncode == 0, r.stderr
    r = run_cli("generate", "--model", tmp_path / "var", "--classes", "star", "ring", "--seed", "0",
                "--out", tmp_path / "grid.png", "-q")
    assert r.returncode == 0, r.stderr and (tmp_path / "grid.png").is_file()


def test_more_smooth_decodes_its_own_chain(var_case):
    _, model, io = var_case
    from argen.pipeline import ARPipeline

    pipe = ARPipeline(model, model.tokenizer)
    a = pipe.generate([1, 2], seed=5, cfg_scale=1.5, top_k=10, more_smooth=True, output_type="pt")
    stats = pipe.last_stats
    assert stats.latents is not None and json.dumps(stats.as_dict())
    b = pipe.generate([1, 2], seed=5, cfg_scale=1.5, top_k=10, more_smooth=True, output_type="pt")
    torch.testing.assert_close(a, b)
    smooth_codes = pipe.last_codes
    with torch.no_grad():
        from_codes = model.tokenizer.decode(smooth_codes)
    assert (a - from_codes).abs().max() > 1e-3  # the soft chain is not the drawn codes
    plain = pipe.generate([1, 2], seed=5, cfg_scale=1.5, top_k=10, output_type="codes")
    assert torch.equal(plain[:, :1], smooth_codes[:, :1])  # the first scale is drawn the same way
