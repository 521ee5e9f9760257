"""ELM end to end: the official sampler's images from the tiny LM + BAE fixtures through ARPipeline,
the released files through load_elm / the zoo / `argen convert elm`, training through the CLI, and the
errors a user meets (a BAE of the wrong bit count or split, a file that is not the release asked for)."""
from __future__ import annotations

import pytest
import torch
from conftest import fixture_io, fixture_weights, tiny_elm, two_colour_bae
from PIL import Image

import argen
from argen import ARPipeline
from argen.cli import main
from argen.convert.elm import load_elm, parse_release
from argen.errors import CheckpointError, ConfigError
from argen.generators.elm import ELM
from argen.zoo import OFFICIAL

pytestmark = pytest.mark.usefixtures("one_thread")

LM = fixture_io("elm_lm_tiny")


def test_the_pipeline_gives_the_official_sampler_images(tmp_path):
    """sample.py's sample_func_autoregressive (cfg 2, top-k 1, its labels) -> ids, bits, the decoded images."""
    gen, tok = tiny_elm()
    pipe = ARPipeline(gen, tok, image_size=32)
    labels = LM["pipeline.labels"].tolist()
    codes = pipe.generate(labels, seed=0, cfg_scale=2.0, top_k=1, output_type="codes")
    assert torch.equal(codes, LM["pipeline.ids"])
    images = pipe.generate(labels, seed=0, cfg_scale=2.0, top_k=1, output_type="pt")
    # save_image clamps to [0, 1]; the pipeline clamps to [-1, 1]
    torch.testing.assert_close(images, (LM["pipeline.image"] * 2 - 1).clamp(-1, 1), atol=2e-5, rtol=1e-4)
    pipe.save_pretrained(tmp_path / "elm")
    again = argen.load(str(tmp_path / "elm"))
    assert isinstance(again.generator, ELM) and again.tokenizer.token_each == 2
    assert torch.equal(again.generate(labels, seed=0, cfg_scale=2.0, top_k=1, output_type="codes"), codes)
    sjd = again.generate(labels, seed=0, cfg_scale=2.0, top_k=1, sampler="sjd", window=4, output_type="codes")
    assert torch.equal(sjd, codes)


def test_a_bae_that_does_not_fit_the_lm_is_refused():
    gen, tok = tiny_elm()
    with pytest.raises(ConfigError, match=r"4 bits per position, this ELM reads token_each x code_dim = 2 x 4 = 8"):
        gen.bind_tokenizer(_bae_with_bits(4))
    with pytest.raises(ConfigError, match="splits its 8 bits into 1 sub-tokens, this ELM reads 2 of 4 bits"):
        gen.bind_tokenizer(tok.with_token_each(1))
    with pytest.raises(ConfigError, match="4 bits per position"):
        ARPipeline(gen, _bae_with_bits(4), image_size=32)


def _bae_with_bits(bits: int):
    from argen.tokenizers.binary import BinaryAEConfig, BinaryAutoEncoder

    return BinaryAutoEncoder(BinaryAEConfig(img_size=32, nf=32, ch_mult=[1, 1, 1, 2], res_blocks=1,
                                            attn_resolutions=[4], emb_dim=32, codebook_size=bits))


def test_load_elm_reads_the_architecture_off_the_file_and_names_a_wrong_one(tmp_path):
    path = tmp_path / "L-2-12.pth"
    torch.save(fixture_weights("elm_lm_tiny"), path)
    gen = load_elm(path, n_head=4, block_size=16)
    assert (gen.config.token_each, gen.config.code_dim, gen.config.dim, gen.config.n_layer) == (2, 4, 64, 2)
    with pytest.raises(CheckpointError, match=r"not the ELM asked for: n_layer=24 \(the file has 2\), "
                                              r"dim=1024 \(the file has 64\), code_dim=12 \(the file has 4\)"):
        load_elm(path, "L-2-12")
    with pytest.raises(ConfigError, match="dim 64 is none of the released sizes; pass n_head="):
        load_elm(path)
    with pytest.raises(ConfigError, match="<size>-<token_each>-<code_dim>"):
        parse_release("L-12")
    bad = dict(fixture_weights("elm_lm_tiny"))
    bad.pop("proj.weight")
    with pytest.raises(CheckpointError, match="proj.weight"):
        load_elm(bad, n_head=4, block_size=16)


def test_zoo_entries_pair_each_release_with_its_bae():
    elms = {n: e for n, e in OFFICIAL.items() if e.family == "elm"}
    assert {"elm-l-2-10", "elm-xxl-2-12", "elm-2b-2-12", "elm-l-1-16", "elm-xl-2-8"} <= set(elms)
    assert elms["elm-l-2-10"].files == {"generator": "gpt/L-2-10.pth", "tokenizer": "bae/bae_20/binaryae_ema.th"}
    assert elms["elm-xl-2-8"].files["tokenizer"] == "bae/bae_16/binaryae_ema.th"
    assert elms["elm-l-2-10"].defaults["cfg_schedule"] == "linear" and elms["elm-l-2-10"].defaults["top_k"] == 1000


def test_convert_then_generate_through_the_cli(tmp_path, capsys):
    gpt, bae, out = tmp_path / "gpt.pth", tmp_path / "bae.th", tmp_path / "converted"
    torch.save(fixture_weights("elm_lm_tiny"), gpt)
    # the official BAE file: the autoencoder under ae.*, next to weights the loader drops
    torch.save({**{f"ae.{k}": v for k, v in fixture_weights("elm_bae_tiny").items()},
                "disc.main.0.weight": torch.zeros(2)}, bae)
    common = ["convert", "elm", "--gpt-ckpt", str(gpt), "--bae-ckpt", str(bae), "--out", str(out)]
    assert main(common) == 2  # the tiny fixture is no released size: its heads cannot be read off the file
    assert "dim 64 is none of the released sizes; pass n_head=" in capsys.readouterr().err
    tiny = ["--gpt-arg", "n_head=4", "--gpt-arg", "block_size=16", "--bae-arg", "img_size=32", "--bae-arg", "nf=32",
            "--bae-arg", "ch_mult=[1, 1, 1, 2]", "--bae-arg", "res_blocks=1", "--bae-arg", "attn_resolutions=[4]",
            "--bae-arg", "emb_dim=32", "--top-k", "4"]
    assert main(common + tiny) == 0
    pipe = argen.load(str(out))
    assert pipe.image_size == 32 and pipe.defaults["top_k"] == 4 and pipe.defaults["cfg_schedule"] == "linear"
    assert main(["generate", "-m", str(out), "-c", "1", "3", "--seed", "0", "--out", str(tmp_path / "g.png"),
                 "-q"]) == 0
    assert Image.open(tmp_path / "g.png").size[0] >= 64
    assert main(["generate", "-m", str(out), "-c", "10", "--out", str(tmp_path / "g.png"), "-q"]) == 2
    assert "class" in capsys.readouterr().err


def test_train_an_elm_on_a_binary_autoencoder_through_the_cli(tmp_path):
    data, bae = two_colour_bae(tmp_path)
    lm = tmp_path / "lm"
    assert main(["train", "generator", "--kind", "elm", "--tokenizer", str(bae), "--data", str(data),
                 "--resolution", "16", "--steps", "3", "--batch-size", "4", "--dropout", "0", "--sample-every", "3",
                 "--checkpoint-every", "3", "--out", str(lm), "-q"]) == 0
    pipe = argen.load(str(lm))
    assert isinstance(pipe.generator, ELM) and pipe.generator.token_shape == (2,)
    assert (pipe.generator.config.code_dim, pipe.generator.seq_len, pipe.generator.num_classes) == (3, 16, 2)
    codes = pipe.generate(["class1"], seed=0, output_type="codes")
    assert codes.shape == (1, 16, 2) and int(codes.max()) < 8
    assert len(pipe.generate(["class0"], seed=0, sampler="sjd", window=4)) == 1


def test_the_zoo_reads_local_release_files_and_names_a_file_of_another_size(tmp_path):
    """argen.load("elm-l-2-12", checkpoint_dir=...) finds the release's files laid out as on the hub; a file that
    is not ELM-L 2-12 is named, with what differs, before any BAE is built."""
    (tmp_path / "gpt").mkdir()
    (tmp_path / "bae" / "bae_24").mkdir(parents=True)
    torch.save(fixture_weights("elm_lm_tiny"), tmp_path / "gpt" / "L-2-12.pth")
    torch.save({f"ae.{k}": v for k, v in fixture_weights("elm_bae_tiny").items()},
               tmp_path / "bae" / "bae_24" / "binaryae_ema.th")
    with pytest.raises(CheckpointError, match=r"L-2-12.pth is not the ELM asked for: n_layer=24 \(the file has 2\)"):
        argen.load("elm-l-2-12", checkpoint_dir=tmp_path)
