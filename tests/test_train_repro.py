"""Training runs are the user's choice of augmentation and a function of their seed: no image is
mirrored unless asked; the same settings twice give bit-identical weights; a run killed after a
checkpoint and resumed ends with the weights of an uninterrupted run (every trainer, each family)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import argen.train.generator as gen_mod
import argen.train.tokenizer as tok_mod
from argen.cli import _settings as cli_settings
from argen.cli import build_parser
from argen.errors import CheckpointError, ConfigError
from argen.train import TrainSettings, train_generator, train_tokenizer
from argen.train.data import make_dataset
from argen.train.generator import generator_config
from argen.train.loop import run_seed
from argen.train.tokenizer import tokenizer_config


def _settings(out, **kw):
    base = dict(out=str(out), resolution=16, steps=3, batch_size=4, warmup_steps=2, sample_every=100,
                checkpoint_every=2, progress=False)
    return TrainSettings(**{**base, **kw})


def _folder(root, classes=3, per_class=6, size=(24, 16)):
    """Images whose left half is dark and right half bright (a mirrored one is told at once), random
    pixels otherwise (every crop differs), wider than tall (a random crop can move)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            w, h = size
            px = rng.integers(0, 100, (h, w, 3), dtype=np.uint8)
            px[:, w // 2:] += 155
            Image.fromarray(px).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("imgs"))


def _mirrored(images):
    """Per image: is the bright half on the left?"""
    half = images.shape[-1] // 2
    return images[..., :half].mean(dim=(1, 2, 3)) > images[..., half:].mean(dim=(1, 2, 3))


def _seen_images(monkeypatch, settings):
    """The images a tokenizer run trains on, as its loss receives them (the loss itself replaced by a
    zero: only the data stream matters here)."""
    seen = []

    def spy(model, images, *a, **kw):
        seen.append(images.detach().clone())
        zero = sum(p.sum() for p in model.parameters()) * 0.0
        return zero, images, {"rec": 0.0}

    with monkeypatch.context() as m:
        m.setattr(tok_mod, "vq_loss", spy)
        train_tokenizer(settings, tokenizer_config("tiny"))
    return torch.cat(seen)


def test_flips_and_random_crops_only_when_asked(folder, tmp_path, monkeypatch):
    kw = dict(data=str(folder), steps=8, batch_size=16, checkpoint_every=100)
    plain = _seen_images(monkeypatch, _settings(tmp_path / "plain", **kw))
    ds = make_dataset(str(folder), 16)[0]
    centre = torch.stack([ds.load(i)[0] for i in range(len(ds))])
    assert len(plain) == 128 and not _mirrored(plain).any()  # the default: never mirrored
    assert all((centre == im).all(dim=(1, 2, 3)).any() for im in plain)  # and always the centre crop
    flipped = _seen_images(monkeypatch, _settings(tmp_path / "flip", hflip=True, **kw))
    assert 0.35 < _mirrored(flipped).float().mean() < 0.65  # about half
    cropped = _seen_images(monkeypatch, _settings(tmp_path / "crop", random_crop=True, **kw))
    assert not _mirrored(cropped).any()
    off_centre = sum(not (centre == im).all(dim=(1, 2, 3)).any() for im in cropped)
    assert off_centre > 64  # 9 offsets: most crops are not the centre
    info = json.loads((tmp_path / "flip" / "train.json").read_text())
    assert info["augment"] == {"hflip": True, "random_crop": False} and info["settings"]["hflip"] is True
    state = json.loads((tmp_path / "crop" / "checkpoint" / "state.json").read_text())
    assert state["augment"] == {"hflip": False, "random_crop": True}
    # a resumed run must augment as the checkpoint did (its data stream)
    with pytest.raises(CheckpointError, match="augment: checkpoint .*'random_crop': True.* vs now"):
        train_tokenizer(_settings(tmp_path / "crop", resume=True, **{**kw, "steps": 6}), tokenizer_config("tiny"))


def test_augmentation_flags_and_errors(tmp_path, capsys):
    parser = build_parser()
    base = ["train", "tokenizer", "--data", "imgs", "--out", str(tmp_path)]
    s = cli_settings(parser.parse_args(base))
    assert (s.hflip, s.random_crop) == (False, False)
    s = cli_settings(parser.parse_args(base + ["--hflip", "--random-crop"]))
    assert (s.hflip, s.random_crop) == (True, True)
    s = cli_settings(parser.parse_args(["train", "generator", "--tokenizer", "t", "--out", "o", "--hflip", "--no-hflip",
                                        "--center-crop"]))
    assert (s.hflip, s.random_crop) == (False, False)
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--random-crop", "--center-crop"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "generator", "--help"])
    assert "--hflip, --no-hflip" in capsys.readouterr().out.replace("\n", " ")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "tokenizer", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert "mirror half of the training images (default: off" in helptext and "--center-crop" in helptext
    with pytest.raises(ConfigError, match="the shapes set draws random positions"):
        make_dataset("shapes", 16, hflip=True)
    with pytest.raises(ConfigError, match="hflip must be True or False"):
        _settings(tmp_path, hflip="yes")


def test_run_seed_is_a_function_of_seed_and_place():
    assert run_seed(0, "step", 3, 0) == run_seed(0, "step", 3, 0)
    seeds = {run_seed(s, "step", step, r) for s in range(2) for step in range(50) for r in range(2)}
    assert len(seeds) == 200 and all(0 <= x < 2**63 for x in seeds)


# -- same settings twice, and killed + resumed, give the same weights ----------------------------------
class _Killed(Exception):
    pass


def _kill_after_checkpoint(monkeypatch, module, at):
    """Make ``module``'s trainer die right after writing the checkpoint of step ``at``."""
    save = module.save_checkpoint

    def save_then_die(out, step, *a, **kw):
        save(out, step, *a, **kw)
        if step == at:
            raise _Killed

    monkeypatch.setattr(module, "save_checkpoint", save_then_die)


def _tensors(obj, prefix=""):
    """Every tensor in a (nested) state dict, by path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _tensors(val, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in _tensors(val, f"{prefix}/{i}").items()}
    return {}


def _weights(out):
    """The run's result and its last checkpoint (weights, EMA, discriminator, code usage, optimizers)."""
    found = {f.relative_to(out).as_posix(): load_file(str(f)) for f in sorted(out.rglob("*.safetensors"))}
    found.update({f.relative_to(out).as_posix(): _tensors(torch.load(f, weights_only=True))
                  for f in sorted((out / "checkpoint").glob("*.optim.pt"))})
    return {f"{name}:{k}": v for name, state in found.items() for k, v in state.items()}


def assert_bit_identical(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 0
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:5]}"


def _run_and_resumed(tmp_path, monkeypatch, module, train, **kw):
    """An uninterrupted 3-step run, and the same run killed after its step-2 checkpoint and resumed (an
    image folder's resumed part with 2 loader workers). Equal weights show both that the same settings
    give the same run (the killed part started in another RNG state of this process) and that resume
    replays it."""
    a = train(_settings(tmp_path / "a", **kw))
    _kill_after_checkpoint(monkeypatch, module, 2)
    with pytest.raises(_Killed):
        train(_settings(tmp_path / "b", **kw))
    monkeypatch.undo()
    torch.manual_seed(12345)  # what ran before in the process must not matter
    b = train(_settings(tmp_path / "b", resume=True, **{**kw, "num_workers": 2 if kw.get("data") else 0}))
    return a, b


def test_the_same_command_twice_gives_the_same_tokenizer(tmp_path, capsys):
    """The report's command (on fewer steps and pixels), dead-code restarts on: every tensor equal;
    and the comparison can fail: another --seed gives another tokenizer."""
    from argen.cli import main

    def run(name, *extra):
        assert main(["train", "tokenizer", "--data", "shapes", "--preset", "tiny", "--resolution", "16", "--steps", "3",
                     "--batch-size", "4", "--warmup-steps", "1", "--dead-code-threshold", "0.99", "--quiet",
                     "--out", str(tmp_path / name), *extra]) == 0
        return tmp_path / name

    first = run("first")
    assert json.loads((first / "train.json").read_text())["final_losses"]["restarted"] > 0
    assert_bit_identical(first, run("again"))
    with pytest.raises(AssertionError, match="tensors differ"):
        assert_bit_identical(first, run("seed1", "--seed", "1"))


TOKENIZER_CASES = {
    # a VQ on an augmented image folder with dead-code restarts and the GAN loss (from step 1)
    "vq": dict(kind="vq", options=dict(dead_code_threshold=0.99, disc_weight=0.1, disc_start=1), folder=True),
    "multiscale": dict(kind="multiscale", options=dict(dead_code_threshold=0.99, disc_weight=0.1), folder=False),
    "kl": dict(kind="kl", options=dict(disc_weight=0.1, disc_start=1), folder=False),  # posterior samples
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_tokenizer_runs_repeat_and_resume_bit_exactly(case, folder, tmp_path, monkeypatch):
    c = TOKENIZER_CASES[case]
    kw = dict(data=str(folder), hflip=True, random_crop=True) if c["folder"] else {}
    a, resumed = _run_and_resumed(tmp_path, monkeypatch, tok_mod, lambda s: train_tokenizer(
        s, tokenizer_config("tiny", c["kind"], 16), **c["options"]), **kw)
    if "dead_code_threshold" in c["options"]:
        assert json.loads((a / "train.json").read_text())["final_losses"]["restarted"] > 0  # restarts happened
        assert "checkpoint/restarts.safetensors:usage" in _weights(a)
    assert "checkpoint/discriminator.safetensors:net.0.weight" in _weights(a)
    assert_bit_identical(a, resumed)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("toks")
    return {kind: str(train_tokenizer(_settings(root / kind, steps=1), tokenizer_config("tiny", kind, 16)))
            for kind in ("vq", "multiscale", "kl")}


GENERATOR_CASES = {"llamagen": "vq", "var": "multiscale", "mar": "kl", "flowar": "kl"}
# the result's sample grid (drawn at the end of every run) with few iterations: it is not compared
CHEAP_SAMPLING = {"mar": ({"cfg_scale": 1.0, "num_iter": 2}, {"num_sampling_steps": "2"}),
                  "flowar": ({"cfg_scale": 1.0, "num_steps": 2}, {})}


@pytest.mark.parametrize("family", list(GENERATOR_CASES))
def test_generator_runs_repeat_and_resume_bit_exactly(family, tokenizers, folder, tmp_path, monkeypatch):
    tok = tokenizers[GENERATOR_CASES[family]]
    # llamagen on the augmented folder (its data stream), the others on shapes; MAR/FlowAR on posterior samples
    kw = dict(data=str(folder), hflip=True, random_crop=True) if family == "llamagen" else {}
    defaults, overrides = CHEAP_SAMPLING.get(family, (None, {}))
    a, resumed = _run_and_resumed(tmp_path, monkeypatch, gen_mod, lambda s: train_generator(
        s, tok, generator_config("tiny", family, **overrides), family=family, sample_defaults=defaults), **kw)
    assert "checkpoint/ema.safetensors" in {k.split(":")[0] for k in _weights(a)}
    assert_bit_identical(a, resumed)
