"""Official checkpoint loading: wrappings, strictness, and clear errors for bad files."""
import pytest
import torch
from conftest import GPT_TINY_ARGS, VQ_TINY_ARGS, fixture_weights

from argen.convert.llamagen import load_gpt, load_vq
from argen.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def sd():
    return fixture_weights("llamagen_gpt_tiny")


@pytest.mark.parametrize("wrap", ["flat", "model", "module", "state_dict"])
def test_official_wrappings(tmp_path, sd, wrap, gpt_io):
    obj = sd if wrap == "flat" else {wrap: sd, "steps": 10, "args": {"lr": 1e-4}}
    torch.save(obj, tmp_path / "c.pt")
    m = load_gpt(tmp_path / "c.pt", **GPT_TINY_ARGS)
    assert not m.training
    with torch.no_grad():
        torch.testing.assert_close(m(gpt_io["tokens"], gpt_io["labels"]), gpt_io["logits_teacher_forced"],
                                   atol=1e-5, rtol=1e-4)


def test_tolerated_non_weight_entries_and_ema(tmp_path, sd):
    extra = dict(sd, freqs_cis=torch.zeros(17, 8, 2))
    extra["layers.0.attention.kv_cache.k_cache"] = torch.zeros(1)
    ema = {k: v + 1 for k, v in sd.items()}
    torch.save({"model": extra, "ema": ema}, tmp_path / "c.pt")
    plain = load_gpt(tmp_path / "c.pt", **GPT_TINY_ARGS)
    averaged = load_gpt(tmp_path / "c.pt", weights="ema", **GPT_TINY_ARGS)
    assert torch.equal(plain.output.weight, sd["output.weight"])
    assert torch.equal(averaged.output.weight, ema["output.weight"])
    assert torch.equal(load_gpt(tmp_path / "c.pt", weights="raw", **GPT_TINY_ARGS).output.weight, sd["output.weight"])
    with pytest.raises(ConfigError, match="auto, ema, raw"):
        load_gpt(tmp_path / "c.pt", weights="average", **GPT_TINY_ARGS)
    torch.save({"model": sd, "steps": 3}, tmp_path / "no_ema.pt")
    with pytest.raises(CheckpointError, match="no 'ema' entry; its keys: model, steps"):
        load_gpt(tmp_path / "no_ema.pt", weights="ema", **GPT_TINY_ARGS)


def test_missing_unexpected_and_misshaped_keys_are_named(sd):
    bad = dict(sd)
    del bad["norm.weight"]
    bad["layers.9.attention.wqkv.weight"] = torch.zeros(3)
    bad["output.weight"] = torch.zeros(65, 64)
    with pytest.raises(CheckpointError) as err:
        load_gpt(bad, **GPT_TINY_ARGS)
    msg = str(err.value)
    assert "missing keys (1): norm.weight" in msg
    assert "unexpected keys (1): layers.9.attention.wqkv.weight" in msg
    assert "output.weight: checkpoint (65, 64) vs model (64, 64)" in msg


def test_wrong_model_size_is_a_clear_error(sd):
    with pytest.raises(CheckpointError, match="does not fit LlamaGen.*wrong shapes"):
        load_gpt(sd, **{**GPT_TINY_ARGS, "dim": 128})


def test_gpt_checkpoint_given_to_the_vq_loader(sd):
    with pytest.raises(CheckpointError, match="missing keys.*unexpected keys"):
        load_vq(sd, **VQ_TINY_ARGS)


def test_corrupt_and_non_checkpoint_files(tmp_path, sd):
    torch.save({"model": sd}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("this is not a checkpoint")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    for name in ["truncated.pt", "notes.txt", "bad.safetensors"]:
        with pytest.raises(CheckpointError, match=f"{name}.*not a readable"):
            load_gpt(tmp_path / name, **GPT_TINY_ARGS)
    with pytest.raises(CheckpointError, match="not found"):
        load_gpt(tmp_path / "missing.pt", **GPT_TINY_ARGS)


class NotAWeight:
    """Any class outside torch's safe list: loading it would run arbitrary code."""


def test_arbitrary_pickles_are_refused(tmp_path):
    torch.save({"model": {"x": torch.zeros(1)}, "extra": NotAWeight()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint.*[Ww]eights only"):
        load_gpt(tmp_path / "evil.pt", **GPT_TINY_ARGS)


def test_checkpoint_without_tensors(tmp_path):
    torch.save({"steps": 3, "args": [1, 2]}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="holds no tensors"):
        load_gpt(tmp_path / "empty.pt", **GPT_TINY_ARGS)


def test_unknown_argument_names_and_presets(sd):
    with pytest.raises(ConfigError, match="unknown LlamaGen GPT argument.*n_layers.*valid"):
        load_gpt(sd, **{**GPT_TINY_ARGS, "n_layers": 2})
    with pytest.raises(ConfigError, match="unknown LlamaGen GPT preset 'GPT-Q'.*GPT-B"):
        load_gpt(sd, "GPT-Q")
    with pytest.raises(ConfigError, match="unknown LlamaGen VQ argument.*codebook_dim"):
        load_vq(sd, codebook_dim=8)
    with pytest.raises(ConfigError, match="needs a preset"):
        load_gpt(sd)


def test_vq_preset_with_overrides_loads_the_fixture():
    vq = load_vq(fixture_weights("llamagen_vq_tiny"), **VQ_TINY_ARGS)
    assert vq.codebook_size == 64 and vq.downsample == 4 and vq.latent_grid(16) == (4, 4)
    with pytest.raises(ConfigError, match="not divisible"):
        vq.latent_grid(18)


def test_every_loader_and_convert_subcommand_takes_one_weights_choice():
    """`weights="auto" | "ema" | "raw"` on every official loader; one `--weights` on every `argen convert`."""
    import inspect

    from argen.cli import build_parser
    from argen.convert import flowar, llamagen, mar, var
    from argen.families import families

    loaders = [llamagen.load_gpt, llamagen.load_vq, var.load_var, var.load_var_vae, mar.load_mar, mar.load_vae,
               flowar.load_flowar]
    assert all(inspect.signature(f).parameters["weights"].default == "auto" for f in loaders)
    convert = next(a for a in build_parser()._actions if a.dest == "command").choices["convert"]
    for fam in families():
        sub = next(a for a in convert._actions if a.dest == "family").choices[fam.name]
        flag = next(a for a in sub._actions if "--weights" in a.option_strings)
        assert list(flag.choices) == ["auto", "ema", "raw"] and flag.default == "auto"
