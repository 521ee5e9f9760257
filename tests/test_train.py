"""Trainers: a step reduces the loss, checkpoints resume exactly, 2 CPU processes work, bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import argen
from argen.data import ShapesDataset
from argen.errors import CheckpointError, ConfigError
from argen.generators import LlamaGen, LlamaGenConfig
from argen.tokenizers import VQTokenizer
from argen.tokenizers.msvq import MultiScaleVQConfig, MultiScaleVQVAE
from argen.train import TrainSettings, train_generator, train_tokenizer
from argen.train.generator import generator_config, next_token_loss
from argen.train.loop import RecentMeans
from argen.train.tokenizer import tokenizer_config, vq_loss


def _batch(n=8, res=16):
    ds = ShapesDataset(res)
    return torch.stack([ds[i][0] for i in range(n)]), torch.tensor([ds[i][1] for i in range(n)])


def test_one_tokenizer_step_reduces_the_loss():
    torch.manual_seed(0)
    model = VQTokenizer(tokenizer_config("tiny"))
    images, _ = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before, _, _ = vq_loss(model, images)
    before.backward()
    opt.step()
    with torch.no_grad():
        after, _, _ = vq_loss(model, images)
    assert after < before


def build_tokenizer(cfg):
    return (MultiScaleVQVAE if isinstance(cfg, MultiScaleVQConfig) else VQTokenizer)(cfg)


@pytest.mark.parametrize("kind", ["vq", "multiscale"])
def test_patch_encoder_latents_depend_only_on_their_own_pixels(kind):
    torch.manual_seed(0)
    model = build_tokenizer(tokenizer_config("tiny", kind, 16, encoder_type="patch")).eval()
    conv = build_tokenizer(tokenizer_config("tiny", kind, 16)).eval()
    images, _ = _batch(2)
    changed = images.clone()
    changed[:, :, 8:, :] = torch.rand_like(changed[:, :, 8:, :]) * 2 - 1  # latent rows 2.. (downsample 4)
    with torch.no_grad():
        a, b = model.encoder(images), model.encoder(changed)
        assert torch.equal(a[:, :, :2], b[:, :, :2]) and not torch.equal(a[:, :, 2:], b[:, :, 2:])
        if kind == "vq":  # the codes too (the multi-scale quantiser mixes scales by design)
            assert torch.equal(model.encode(images)[:, :2], model.encode(changed)[:, :2])
        # the conv encoder's latents see the whole image (GroupNorm statistics, attention)
        assert not torch.equal(conv.encoder(images)[:, :, :2], conv.encoder(changed)[:, :, :2])
    # one step of training reduces the loss, as for the conv encoder
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # small: a step must not re-assign many codes
    before, _, _ = vq_loss(model, images)
    before.backward()
    opt.step()
    with torch.no_grad():
        assert vq_loss(model, images)[0] < before
    with pytest.raises(ConfigError, match="unknown encoder_type 'mlp'; known: conv, patch"):
        tokenizer_config("tiny", kind, 16, encoder_type="mlp")


def test_one_generator_step_reduces_the_loss():
    torch.manual_seed(0)
    cfg = LlamaGenConfig(**generator_config("tiny"), vocab_size=256, block_size=16, num_classes=10,
                         token_dropout_p=0, resid_dropout_p=0, ffn_dropout_p=0, class_dropout_prob=0.1)
    model = LlamaGen(cfg)
    model.init_weights()
    model.eval()  # no class dropout: the same batch before and after
    codes = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = next_token_loss(model, codes, labels)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = next_token_loss(model, codes, labels)
    assert after < before


def _settings(out, **kw):
    base = dict(out=str(out), resolution=16, steps=4, batch_size=4, warmup_steps=2, sample_every=4,
                checkpoint_every=2, progress=False)
    return TrainSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    tok = train_tokenizer(_settings(root / "tok"), tokenizer_config("tiny"))
    gen = train_generator(_settings(root / "gen"), str(tok), generator_config("tiny"))
    return tok, gen


def test_training_writes_loadable_results(trained):
    tok, gen = trained
    assert (tok / "config.json").is_file() and (tok / "samples" / "tokenizer_000004.png").is_file()
    assert (gen / "samples" / "generator_000004.png").is_file()
    info = json.loads((gen / "train.json").read_text())
    assert info["steps"] == 4 and info["final_losses"]["loss"] > 0
    pipe = argen.load(gen)
    assert pipe.class_names[6] == "star" and pipe.image_size == 16
    assert len(pipe.generate(["star", "ring"], seed=0)) == 2


def test_final_losses_are_recent_means_not_one_batch():
    recent = RecentMeans(window=3)
    for step, loss in enumerate([9.0, 1.0, 2.0, 3.0]):
        recent.add({"loss": loss, **({"restarted": 4} if step == 3 else {})})
    assert recent.means() == {"loss": 2.0, "restarted": 4.0}  # the 9.0 left the window


def test_resume_continues_step_count_and_optimizer_state(trained, tmp_path):
    tok, _ = trained
    out = tmp_path / "gen"
    train_generator(_settings(out, steps=2), str(tok), generator_config("tiny"))
    first = load_file(str(out / "checkpoint" / "generator.safetensors"))
    first_time = json.loads((out / "checkpoint" / "state.json").read_text())["train_time_s"]  # what resume adds to
    train_generator(_settings(out, steps=4, resume=True), str(tok), generator_config("tiny"))
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4
    assert json.loads((out / "train.json").read_text())["train_time_s"] > first_time  # cumulative
    optim = torch.load(out / "checkpoint" / "generator.optim.pt", weights_only=True)
    assert all(int(s["step"]) == 4 for s in optim["state"].values())  # Adam kept counting from 2
    second = load_file(str(out / "checkpoint" / "generator.safetensors"))
    assert not torch.equal(first["output.weight"], second["output.weight"])
    with pytest.raises(CheckpointError, match="another configuration.*config"):
        train_generator(_settings(out, steps=6, resume=True), str(tok), generator_config("tiny", dim=32))


def test_init_from_continues_a_finished_model(trained, tmp_path):
    """--init-from: the run starts at the given weights (zero steps of a 1-step run at lr ~0 keep
    them); dropout may differ, the architecture may not; the CLI takes a pipeline folder."""
    tok, gen = trained
    start = argen.load(gen).generator.state_dict()
    out = train_generator(_settings(tmp_path / "ft", steps=1, lr=1e-12, warmup_steps=1), str(tok),
                          generator_config("tiny"), dropout=0.3, init_from=str(gen))
    tuned = argen.load(out).generator.state_dict()
    assert all(torch.allclose(tuned[k], start[k], atol=1e-6) for k in start)
    fresh = train_generator(_settings(tmp_path / "new", steps=1, lr=1e-12, warmup_steps=1), str(tok),
                            generator_config("tiny"))
    assert not torch.allclose(argen.load(fresh).generator.state_dict()["output.weight"], start["output.weight"])
    with pytest.raises(ConfigError, match=r"another architecture or tokenizer \(dim: saved 64 vs now 32"):
        train_generator(_settings(tmp_path / "bad"), str(tok), generator_config("tiny", dim=32), init_from=str(gen))
    with pytest.raises(CheckpointError, match="no generator there"):
        train_generator(_settings(tmp_path / "bad2"), str(tok), generator_config("tiny"), init_from=str(tmp_path))
    with pytest.raises(ConfigError, match="holds a 'llamagen-vq', this run trains a 'llamagen'"):
        train_generator(_settings(tmp_path / "bad3"), str(tok), generator_config("tiny"), init_from=str(tok))
    r = subprocess.run([sys.executable, "-m", "argen", "train", "generator", "--tokenizer", str(tok),
                        "--init-from", str(gen),
                        "--out", str(tmp_path / "cli"), "--resolution", "16", "--steps", "1", "--batch-size", "2",
                        "--warmup-steps", "1", "--seed", "3", "--quiet"], capture_output=True, text=True,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_seed_picks_the_shapes_stream():
    from argen.train.data import make_dataset

    a, b = make_dataset("shapes", 16)[0], make_dataset("shapes", 16, seed=1)[0]
    assert torch.equal(a[5][0], make_dataset("shapes", 16)[0][5][0])
    assert not torch.equal(a[5][0], b[5][0]) and a[5][1] == b[5][1]  # same balanced labels, new images


def test_bad_training_input(trained, tmp_path):
    tok, _ = trained
    with pytest.raises(ConfigError, match="not divisible by the tokenizer's downsampling factor 4"):
        train_tokenizer(_settings(tmp_path / "t", resolution=18), tokenizer_config("tiny"))
    with pytest.raises(ConfigError, match="no images found"):
        (tmp_path / "empty").mkdir()
        train_generator(_settings(tmp_path / "g", data=str(tmp_path / "empty")), str(tok), generator_config("tiny"))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train_tokenizer(_settings(tmp_path / "t2", resume=True), tokenizer_config("tiny"))
    with pytest.raises(ConfigError, match="unknown tokenizer preset 'huge'"):
        tokenizer_config("huge")
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        _settings(tmp_path, steps=0)
    with pytest.raises(ConfigError, match="latents='mean' is for a tokenizer that samples .*discrete"):
        train_generator(_settings(tmp_path / "g2"), str(tok), generator_config("tiny"), latents="mean")
    with pytest.raises(ConfigError, match="latents must be one of sample, mean, got 'mode'"):
        train_generator(_settings(tmp_path / "g3"), str(tok), generator_config("tiny"), latents="mode")


def test_two_cpu_processes(trained, tmp_path):
    """torchrun with 2 processes (gloo on CPU) through the CLI."""
    tok, _ = trained
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "argen", "train", "generator", "--tokenizer", str(tok), "--out", str(tmp_path / "ddp"),
           "--resolution", "16", "--steps", "3", "--batch-size", "2", "--warmup-steps", "1",
           "--sample-every", "3", "--checkpoint-every", "3", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((tmp_path / "ddp" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    assert json.loads((tmp_path / "ddp" / "train.json").read_text())["num_processes"] == 2
    assert argen.load(tmp_path / "ddp").generator.config.num_classes == 10


def test_generator_config_overrides_are_checked_by_name():
    assert generator_config("tiny", "mar", mask_ratio_min=0.5)["mask_ratio_min"] == 0.5
    with pytest.raises(ConfigError, match=r"unknown mar config option\(s\) bogus; known: .*mask_ratio_min"):
        generator_config("tiny", "mar", bogus=1)
    with pytest.raises(ConfigError, match="img_size: set from the tokenizer"):
        generator_config("tiny", "mar", img_size=32)
    with pytest.raises(ConfigError, match="unknown llamagen config option"):
        generator_config("tiny", "llamagen", mask_ratio_min=0.5)


def test_ema_copies_buffers_and_loading_rebuilds_config_buffers():
    """A -inf mask entry averaged by the EMA would become NaN (-inf + 0 * nan), and a stale stored mask
    would poison every teacher-forced loss of a run started with --init-from."""
    from argen.convert.checkpoint import load_into
    from argen.generators.var import VAR, VARConfig
    from argen.train.loop import EMA

    var = VAR(VARConfig(depth=2, embed_dim=32, num_heads=2, vocab_size=16, Cvae=4, num_classes=3, patch_nums=(1, 2)))
    mask = var.attn_bias_for_masking.clone()
    assert torch.isinf(mask).any()
    ema = EMA(var, 0.9)
    with torch.no_grad():
        var.head.weight.add_(1.0)
    for _ in range(3):
        ema.update(var)
    assert torch.equal(ema.shadow["attn_bias_for_masking"], mask)
    assert not torch.equal(ema.shadow["head.weight"], var.head.weight)  # parameters are still averaged
    state = {k: v.clone() for k, v in var.state_dict().items()}
    state["attn_bias_for_masking"].fill_(float("nan"))  # what argen <= stop 21 wrote for VAR and FlowAR runs
    fresh = VAR(var.config)
    load_into(fresh, state)
    assert torch.equal(fresh.attn_bias_for_masking, mask)
    assert torch.equal(fresh.head.weight, var.head.weight)
