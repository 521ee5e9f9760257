"""ELM's masked LM as a family: the zoo entries and their random-weights build, a tiny pipeline through the mask
sampler (seeded, saved and loaded, previewed), `argen convert elm-mlm` and `argen train generator --kind elm-mlm`
through the CLI, the demo's controls, and the errors a user meets (a sampler that cannot drive it, a BAE that
does not fit, a file of no released size)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_elm, tiny_family_pipe, two_colour_bae
from PIL import Image

import argen
from argen import ARPipeline
from argen.cli import main
from argen.errors import ConfigError
from argen.families import family_for_tokenizer, get_family
from argen.generators.elm_mlm import ElmMLM, ElmMLMConfig
from argen.preview import Finished, Preview, generate_stream
from argen.samplers import default_sampler, samplers_for
from argen.zoo import OFFICIAL

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dim=32, n_layer=2, n_head=2, multiple_of=32, num_classes=10, token_each=1, code_dim=8, block_size=16)


@pytest.fixture(scope="module")
def tiny():
    return tiny_family_pipe("elm-mlm")


def test_the_family_is_registered_for_bits_behind_the_ar_elm():
    fam = get_family("elm-mlm")
    assert fam.kind == "masked" and fam.tokenizer_kind == "bits" and fam.generator_class is ElmMLM
    assert fam.trainable and family_for_tokenizer("bits").name == "elm"  # the AR ELM stays the default


def test_zoo_entries_name_the_released_files_and_the_mlm_sampling():
    mlms = {n: e for n, e in OFFICIAL.items() if e.family == "elm-mlm"}
    assert set(mlms) == {"elm-mlm-l-1-16", "elm-mlm-xl-1-16", "elm-mlm-xxl-1-16"}
    e = mlms["elm-mlm-xl-1-16"]
    assert e.files == {"generator": "gpt/mlmXL-1-16.pth", "tokenizer": "bae/bae_16/binaryae_ema.th"}
    assert e.repo_id == "xuantonglll/ELM" and "unverified" in e.description
    assert [mlms[f"elm-mlm-{s}-1-16"].params for s in ("l", "xl", "xxl")] == ["445M", "903M", "1.6B"]
    assert e.defaults["num_iter"] == 10 and e.defaults["cfg_schedule"] == "linear"


def test_random_weights_build_the_released_architecture():
    pipe = argen.load("elm-mlm-l-1-16", random_weights=True)
    gen, tok = pipe.generator, pipe.tokenizer
    assert isinstance(gen, ElmMLM) and gen.config == ElmMLMConfig.preset("L", keep_unused=False)
    assert (gen.token_shape, gen.seq_len, gen.vocab_size, gen.num_classes) == ((1,), 256, 65536, 1000)
    assert (tok.bits, tok.token_each, pipe.image_size) == (16, 1, 256)
    assert default_sampler(gen) == "mask" and samplers_for(gen) == ["mask"]
    # the lean build: what the released files' sizes say they hold (1.51 GB in float32)
    assert round(sum(p.numel() for p in gen.parameters()) * 4 / 1e9, 2) == 1.51
    with torch.no_grad():  # the head reads the random word table: logits are not flat
        logits = gen.mlm_layer(torch.randn(1, 1, gen.config.dim), gen.tok_embedder.weight[: gen.vocab_size])
    assert logits.std() > 0.1


def test_a_tiny_pipeline_samples_with_the_mask_sampler_deterministically(tiny):
    pipe, _ = tiny
    images = pipe.generate([0, 1], seed=0, sampler="mask", num_iter=4)
    codes = pipe.last_codes
    assert len(images) == 2 and images[0].size == (32, 32)
    assert codes.shape == (2, 16, 1) and int(codes.max()) < 256
    assert pipe.last_stats.forward_passes == 4
    assert torch.equal(pipe.generate([0, 1], seed=0, sampler="mask", num_iter=4, output_type="codes"), codes)
    assert torch.equal(pipe.generate([0, 1], seed=0, output_type="codes"), codes)  # mask is the default
    assert not torch.equal(pipe.generate([0, 1], seed=1, num_iter=4, output_type="codes"), codes)
    assert pipe.generate([0], seed=0, num_iter=1, output_type="codes").shape == (1, 16, 1)


def test_save_pretrained_and_load_round_trip(tiny, tmp_path):
    pipe, _ = tiny
    codes = pipe.generate([3, 4], seed=2, output_type="codes")
    loaded = argen.load(str(pipe.save_pretrained(tmp_path / "mlm")))
    assert isinstance(loaded.generator, ElmMLM) and loaded.family.name == "elm-mlm"
    assert loaded.generator.config == pipe.generator.config and loaded.tokenizer.token_each == 1
    assert loaded.defaults == pipe.defaults
    assert torch.equal(loaded.generate([3, 4], seed=2, output_type="codes"), codes)


def test_previews_grey_out_the_positions_still_masked(tiny):
    pipe, _ = tiny
    events = list(generate_stream(pipe, [0, 1], seed=0, sampler="mask", preview_every=1, num_iter=4))
    previews = [e for e in events if isinstance(e, Preview)]
    assert [p.step for p in previews] == [1, 2, 3, 4] and isinstance(events[-1], Finished)
    first = np.asarray(previews[0].images[0], dtype=np.float32)
    cell = 32 // 4
    grey = [np.abs(first[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] - 127.5).max() <= 1
            for r in range(4) for c in range(4)]
    assert 0 < sum(grey) < 16  # after pass 1 of 4 some positions are fixed, most are still masked


def test_a_bae_that_does_not_fit_and_a_sampler_that_cannot_drive_it_are_refused(tiny):
    pipe, _ = tiny
    with pytest.raises(ConfigError, match="sampler 'ar' cannot drive a 'masked' model; samplers for it: mask"):
        pipe.generate([0], seed=0, sampler="ar")
    with pytest.raises(ConfigError, match="unknown sampler 'nope'"):
        pipe.generate([0], seed=0, sampler="nope")
    with pytest.raises(ConfigError, match="num_iter must be an integer in"):
        pipe.generate([0], seed=0, num_iter=0)
    with pytest.raises(ConfigError, match="reads 8 bits as 2 sub-token.*this MLM reads 1 of 8 bits"):
        ARPipeline(pipe.generator, tiny_elm()[1])


def test_convert_then_generate_through_the_cli(tmp_path, capsys):
    torch.manual_seed(0)
    gen = ElmMLM(ElmMLMConfig(**TINY))
    gen.init_weights()
    gpt, bae, out = tmp_path / "mlm.pth", tmp_path / "bae.th", tmp_path / "converted"
    torch.save(gen.state_dict(), gpt)
    # the official BAE file: the autoencoder under ae.*, next to weights the loader drops
    torch.save({**{f"ae.{k}": v for k, v in tiny_elm()[1].state_dict().items()}, "disc.main.0.weight": torch.zeros(2)},
               bae)
    common = ["convert", "elm-mlm", "--gpt-ckpt", str(gpt), "--bae-ckpt", str(bae), "--out", str(out)]
    bae_args = ["--bae-arg", "img_size=32", "--bae-arg", "nf=32", "--bae-arg", "ch_mult=[1, 1, 1, 2]",
                "--bae-arg", "res_blocks=1", "--bae-arg", "attn_resolutions=[4]", "--bae-arg", "emb_dim=32"]
    assert main(common + bae_args) == 2  # no released size: the heads cannot be read off the file
    assert "dim 32, 2 layers, code_dim 8 is none of the released sizes" in capsys.readouterr().err
    assert main(common + bae_args + ["--gpt-arg", "n_head=2", "--gpt-arg", "block_size=16", "--gpt-arg",
                                     "multiple_of=32", "--num-iter", "4", "--keep-unused"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["generator"]["token_each"] == 1
    pipe = argen.load(str(out))
    assert isinstance(pipe.generator, ElmMLM) and pipe.image_size == 32 and pipe.generator.num_classes == 10
    assert pipe.defaults["num_iter"] == 4 and pipe.defaults["cfg_schedule"] == "linear"
    for k, v in gen.state_dict().items():
        assert torch.equal(pipe.generator.state_dict()[k], v), k
    lean = tmp_path / "lean"  # the default: the unused pos_embed / output weights of the file are ignored
    assert main(common[:-1] + [str(lean)] + bae_args + ["--gpt-config", str(_write(tmp_path / "gpt.json", dict(
        n_head=2, block_size=16, multiple_of=32)))]) == 0
    lean_state = argen.load(str(lean)).generator.state_dict()
    assert "output.weight" not in lean_state and "pos_embed.weight" not in lean_state
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in lean_state.items())
    # the zoo's way in: the record's load_official on the two files (the MLM's split read into the BAE)
    bae_kw = dict(img_size=32, nf=32, ch_mult=[1, 1, 1, 2], res_blocks=1, attn_resolutions=[4], emb_dim=32)
    mlm, tok = get_family("elm-mlm").load_official({"generator": gpt, "tokenizer": bae},
                                                   {**TINY, "keep_unused": False}, bae_kw, "cpu", None)
    assert tok.token_each == 1 and torch.equal(mlm.state_dict()["tok_embedder.weight"], gen.tok_embedder.weight)
    assert main(["generate", "-m", str(out), "-c", "1", "3", "--seed", "0", "--sampler", "mask", "--num-iter", "2",
                 "--out", str(tmp_path / "g.png"), "-q"]) == 0
    assert Image.open(tmp_path / "g.png").size[0] >= 64
    assert main(["generate", "-m", str(out), "-c", "1", "--sampler", "sjd", "--out", str(tmp_path / "h.png"),
                 "-q"]) == 2
    assert "samplers for it: mask" in capsys.readouterr().err


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_a_released_size_is_read_off_the_file():
    from argen.families.elm_mlm import file_architecture, release_preset

    for size in ("L", "XL", "XXL"):
        state = ElmMLM.from_config(ElmMLMConfig.preset(size), device="meta").state_dict()
        found = file_architecture(state, "mlm.pth")
        assert release_preset(found) == size and found["num_classes"] == 1000 and found["block_size"] == 256
    state = ElmMLM.from_config(ElmMLMConfig(**TINY, keep_unused=False), device="meta").state_dict()
    assert file_architecture(state, "x") == dict(dim=32, n_layer=2, code_dim=8, num_classes=10)
    assert release_preset(file_architecture(state, "x")) is None


def test_train_an_mlm_on_a_binary_autoencoder_through_the_cli(tmp_path):
    data, bae = two_colour_bae(tmp_path)
    mlm = tmp_path / "mlm"
    assert main(["train", "generator", "--kind", "elm-mlm", "--tokenizer", str(bae), "--data", str(data),
                 "--resolution", "16", "--steps", "3", "--batch-size", "4", "--dropout", "0", "--sample-every", "3",
                 "--checkpoint-every", "3", "--out", str(mlm), "-q"]) == 0
    pipe = argen.load(str(mlm))
    assert isinstance(pipe.generator, ElmMLM) and pipe.generator.token_shape == (2,)
    assert (pipe.generator.config.code_dim, pipe.generator.seq_len, pipe.generator.num_classes) == (3, 16, 2)
    assert not pipe.generator.config.keep_unused and pipe.defaults["num_iter"] == 10
    codes = pipe.generate(["class1"], seed=0, output_type="codes")
    assert codes.shape == (1, 16, 2) and int(codes.max()) < 8
    assert pipe.last_stats.forward_passes == 10
    assert np.isfinite(json.loads((mlm / "train.json").read_text())["final_losses"]["loss"])


def test_the_demo_shows_the_masked_controls():
    from argen import demo as app
    from argen.demo_models import model_info

    info = model_info("elm-mlm-l-1-16")
    assert info.kind == "masked" and info.samplers() == ["mask"]
    controls = app._controls_for(info)
    assert controls["sampler"]["value"] == "mask" and controls["cfg_scale"]["visible"]
    assert "linear" in controls["cfg_schedule"]["choices"] and "var" not in controls["cfg_schedule"]["choices"]
    assert controls["num_iter"] == {"value": 10, "visible": True}
    assert all(controls[k]["visible"] for k in ("top_k", "top_p", "temperature"))
    assert not controls["diffusion_steps"]["visible"] and not controls["num_steps"]["visible"]
    assert app._options("masked", "mask", 3.0, "linear", 0, 1.0, 1.0, None, 6, None, None, "choice_temperature=2") \
        == {"top_k": 0, "top_p": 1.0, "temperature": 1.0, "num_iter": 6, "cfg_scale": 3.0, "cfg_schedule": "linear",
            "choice_temperature": 2}
