"""One family registry: a family registered here, in this module only, is listed, loads (zoo name with
official files, random weights, pretrained folder), trains for a step through `argen train generator`,
samples and converts through `argen convert` -- no other file knows it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import argen
from argen import modeling, zoo
from argen.cli import build_parser, main
from argen.convert.checkpoint import load_into, read_state_dict
from argen.demo_models import model_info
from argen.errors import ConfigError
from argen.families import Family, arg, families, family_of, get_family, register_family, unregister_family
from argen.families.registry import decode_token_grid, next_token_loss
from argen.generators import LlamaGen, LlamaGenConfig
from argen.options import json_arguments
from argen.tokenizers import VQConfig, VQTokenizer, load_tokenizer
from argen.train.tokenizer import tokenizer_config

TOY_ARGS = dict(dim=32, n_layer=1, n_head=2, multiple_of=32, vocab_size=256, block_size=16, num_classes=10)


class ToyGen(LlamaGen):
    """A 'new' token-wise family: LlamaGen's blocks under another name."""

    registry_name = "toy"


def _toy_weights(path, config: LlamaGenConfig) -> ToyGen:
    model = ToyGen.from_config(config, device="meta")
    return load_into(model, read_state_dict(path), source=str(path)).eval()


def _load_official(paths, generator_args, tokenizer_args, device, dtype):
    gen = _toy_weights(paths["generator"], LlamaGenConfig(**generator_args)).to(device=device, dtype=dtype)
    tok = VQTokenizer.from_config(VQConfig(**tokenizer_args), device="meta")
    return gen, load_into(tok, read_state_dict(paths["tokenizer"]), source="vq").to(device)


def _random_weights(generator_args, tokenizer_args):
    tok = VQTokenizer(VQConfig(**tokenizer_args))
    gen = ToyGen(LlamaGenConfig(**generator_args))
    gen.init_weights()
    torch.nn.init.normal_(gen.output.weight, std=0.02)
    return gen, tok


def _convert(args):
    gen = _toy_weights(args.toy_ckpt, LlamaGenConfig(**json_arguments(args.toy_config, args.toy_arg)))
    return gen, load_tokenizer(args.tokenizer), {"cfg_scale": args.cfg, "top_k": 8}


def _derive_config(tok, *, resolution, num_classes, class_dropout, dropout):
    h, w = tok.latent_grid(resolution)
    return dict(vocab_size=tok.codebook_size, block_size=h * w, num_classes=num_classes,
                class_dropout_prob=class_dropout)


CALLS: list[str] = []  # which of the record's functions argen called


def _counted(name, fn):
    def wrapped(*args, **kwargs):
        CALLS.append(name)
        return fn(*args, **kwargs)

    return wrapped


TOY = Family(
    name="toy",
    generator_class=ToyGen,
    tokenizer_kind="discrete",
    description="toy GPT + VQ (tests only)",
    load_official=_counted("load_official", _load_official),
    random_weights=_counted("random_weights", _random_weights),
    convert_args=(arg("--toy-ckpt", required=True), arg("--toy-config"), arg("--toy-arg", action="append"),
                  arg("--tokenizer", required=True, help="an argen tokenizer folder"),
                  arg("--cfg", type=float, default=2.0)),
    convert=_counted("convert", _convert),
    train_presets={"tiny": dict(dim=32, n_layer=1, n_head=2, multiple_of=32)},
    size_args=(("dim",), ("n_layer",), ("n_head",)),
    derived=frozenset({"vocab_size", "block_size", "num_classes", "class_dropout_prob"}),
    derive_config=_derive_config,
    train_loss=_counted("train_loss", next_token_loss),
    sample_defaults=lambda cfg_scale, top_k, grid: {"cfg_scale": cfg_scale, "top_k": 8, "temperature": 1.0},
    decode=_counted("decode", decode_token_grid),
)


@pytest.fixture()
def toy(monkeypatch):
    """The toy family and its generator class, registered for one test and removed after it."""
    monkeypatch.setitem(modeling._REGISTRY, "toy", ToyGen)
    register_family(TOY)
    CALLS.clear()
    yield TOY
    unregister_family("toy")


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return VQTokenizer(tokenizer_config("tiny", "vq")).save_pretrained(tmp_path_factory.mktemp("toy") / "vq")


def _subcommands(parser, *path):
    for name in path:
        parser = next(a for a in parser._actions if a.dest in ("command", "family", "what")).choices[name]
    return parser


def test_a_registered_family_is_listed_and_goes_away(toy):
    assert [f.name for f in families()] == ["llamagen", "var", "mar", "flowar", "dd-llamagen", "dd-var", "igpt", "elm",
                                                 "elm-mlm", "toy"]
    assert get_family("toy") is toy and toy.kind == "token" and toy.config_class is LlamaGenConfig
    parser = build_parser()
    assert "toy" in next(a for a in _subcommands(parser, "convert")._actions if a.dest == "family").choices
    kind = next(a for a in _subcommands(parser, "train", "generator")._actions if a.dest == "kind")
    assert "toy" in kind.choices
    with pytest.raises(ConfigError, match="already registered"):
        register_family(toy)
    unregister_family("toy")
    assert "toy" not in [f.name for f in families()]
    with pytest.raises(ConfigError,
                       match="unknown generator family 'toy'; known: llamagen, var, mar, flowar, dd-llamagen, dd-var"):
        get_family("toy")
    register_family(toy)  # for the fixture to remove


def test_a_family_answers_to_its_aliases(toy):
    """image-GPT is `--kind pixel` for training and `argen convert igpt`; an alias is unique like a name."""
    assert get_family("pixel") is get_family("igpt")
    kind = next(a for a in _subcommands(build_parser(), "train", "generator")._actions if a.dest == "kind")
    assert {"igpt", "pixel"} <= set(kind.choices)
    with pytest.raises(ConfigError, match="'pixel' is already registered"):
        register_family(dataclasses.replace(toy, name="toy2", aliases=("pixel",)))
    with pytest.raises(ConfigError, match="'toy' is already registered"):
        register_family(dataclasses.replace(toy, name="toy3", aliases=("toy",)))


def test_a_registered_family_trains_samples_loads_and_converts(toy, vq_dir, tmp_path, monkeypatch):
    # trains for a step through the CLI's training entry point (in-process: a subprocess would not know it)
    out = tmp_path / "trained"
    assert main(["train", "generator", "--kind", "toy", "--tokenizer", str(vq_dir), "--out", str(out),
                 "--resolution", "16", "--steps", "1", "--batch-size", "2", "--warmup-steps", "1",
                 "--sample-every", "1", "--checkpoint-every", "1", "-q"]) == 0
    assert CALLS.count("train_loss") == 1 and "decode" in CALLS  # the step and its sample grid
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["config"]["dim"] == 32 and state["config"]["block_size"] == 16

    # loads from the pretrained folder as its own class; samples through the samplers and the pipeline
    pipe = argen.load(out)
    assert type(pipe.generator) is ToyGen and pipe.family is toy and family_of(pipe.generator) is toy
    assert pipe.defaults == {"cfg_scale": 3.0, "top_k": 8, "temperature": 1.0}
    codes, stats = argen.samplers.sample(pipe.generator, [1, 2], seed=0, top_k=8)
    assert codes.shape == (2, 16) and stats.forward_passes == 16
    CALLS.clear()
    images = pipe.generate([1, 2], seed=0, output_type="pt")
    assert images.shape == (2, 3, 16, 16) and CALLS == ["decode"]

    # converts: its `argen convert toy` subcommand, from its record's arguments
    torch.save(pipe.generator.state_dict(), tmp_path / "toy.pt")
    (tmp_path / "toy.json").write_text(json.dumps({k: v for k, v in TOY_ARGS.items() if k != "num_classes"}))
    assert main(["convert", "toy", "--toy-ckpt", str(tmp_path / "toy.pt"), "--toy-config", str(tmp_path / "toy.json"),
                 "--toy-arg", "num_classes=10", "--tokenizer", str(vq_dir), "--out", str(tmp_path / "converted")]) == 0
    again = argen.load(tmp_path / "converted")
    assert type(again.generator) is ToyGen and again.defaults == {"cfg_scale": 2.0, "top_k": 8}
    same = dict(seed=0, output_type="codes", cfg_scale=2.0, top_k=8)
    assert torch.equal(again.generate([1, 2], **same), pipe.generate([1, 2], **same))

    # a zoo entry of the family: official files converted on the fly, random weights, the demo's info
    torch.save(load_tokenizer(vq_dir).state_dict(), tmp_path / "vq.pt")
    entry = zoo.ZooEntry(name="toy-test", family="toy", description="test", image_size=16, repo_id="nobody/toy",
                         files={"generator": "toy.pt", "tokenizer": "vq.pt"}, generator_args=TOY_ARGS,
                         tokenizer_args=dict(vars(tokenizer_config("tiny", "vq"))), defaults={"top_k": 8})
    monkeypatch.setitem(zoo.OFFICIAL, entry.name, entry)
    official = argen.load(entry.name, checkpoint_dir=tmp_path)
    assert torch.equal(official.generate([1, 2], **same), pipe.generate([1, 2], **same))
    random = argen.load(entry.name, random_weights=True)
    assert type(random.generator) is ToyGen and random.generate([0], seed=0, output_type="codes").shape == (1, 16)
    assert {"load_official", "random_weights", "convert"} <= set(CALLS)
    assert model_info(entry.name).kind == "token"


def test_training_checks_the_family_against_the_tokenizer(vq_dir, tmp_path, capsys):
    assert main(["train", "generator", "--kind", "mar", "--tokenizer", str(vq_dir), "--out", str(tmp_path / "x"),
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert ("--kind mar needs a continuous (KL VAE or diffusers AutoencoderKL) tokenizer" in err
            and "'llamagen-vq'" in err)
    with pytest.raises(ConfigError, match="no generator family is trained on 'voxels' tokenizers"):
        from argen.families import family_for_tokenizer

        family_for_tokenizer("voxels")


def test_a_family_whose_generator_breaks_its_protocol_is_refused(toy):
    """Registration holds the generator class to its kind's protocol and names what it lacks."""

    class NoCache(torch.nn.Module):
        kind = "token"

    class Odd(LlamaGen):
        kind = "voxel"

    with pytest.raises(ConfigError,
                       match=r"NoCache declares kind 'token' but lacks .*decode, decode_at.*TokenGenerator"):
        register_family(dataclasses.replace(toy, name="broken", generator_class=NoCache))
    with pytest.raises(ConfigError,
                       match="unknown generator kind 'voxel'; kinds .*: token, scale, continuous, flow-scale"):
        register_family(dataclasses.replace(toy, name="broken", generator_class=Odd))
    with pytest.raises(ConfigError, match="unknown tokenizer kind 'voxels'"):
        register_family(dataclasses.replace(toy, name="broken", tokenizer_kind="voxels"))
    assert "broken" not in [f.name for f in families()]


def test_a_student_family_is_found_by_its_teacher(toy, vq_dir):
    """`argen train dd` finds a teacher's student family through the registry (``distils``): a toy family
    gets a student by registering one, and a half-declared student family is refused."""
    from argen.train.dd import student_from_teacher

    tok = load_tokenizer(vq_dir)
    teacher = ToyGen(LlamaGenConfig(**{**TOY_ARGS, "vocab_size": tok.codebook_size}))
    teacher.init_weights()
    teacher.bind_tokenizer(tok)
    with pytest.raises(ConfigError, match="no distilled-decoding student for a toy teacher .*llamagen, var"):
        student_from_teacher(teacher, tok)
    dd = get_family("dd-llamagen")
    with pytest.raises(ConfigError, match="sets both distils and from_teacher"):
        register_family(dataclasses.replace(dd, name="toy-dd", from_teacher=None, distils="toy"))
    register_family(dataclasses.replace(dd, name="toy-dd", distils="toy"))
    try:
        student, _ = student_from_teacher(teacher, tok, two_step_t=3)
        assert type(student) is dd.generator_class and student.default_t_list(2) == [0, 3]
        assert torch.equal(student.layers[0].attention.wqkv.weight, teacher.layers[0].attention.wqkv.weight)
    finally:
        unregister_family("toy-dd")
