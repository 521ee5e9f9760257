"""The argen CLI end to end on a small converted model, and its one-line errors."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from argen.cli import main


def run_cli(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "argen", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env)


@pytest.fixture(scope="module")
def converted(official_ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny-llamagen"
    d = official_ckpts
    r = run_cli("convert", "llamagen", "--gpt-ckpt", d / "gpt.pt", "--vq-ckpt", d / "vq.pt",
                "--gpt-config", d / "gpt.json", "--vq-config", d / "vq.json", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_convert_then_generate_end_to_end(converted, tmp_path):
    assert (converted / "model_index.json").is_file()
    r = run_cli("generate", "--model", converted, "--classes", "1", "2", "-n", "2", "--seed", "0",
                "--cfg", "4", "--top-k", "8", "--top-p", "0.9", "--temperature", "1.0",
                "--out", tmp_path / "grid.png", "--save-images", tmp_path / "singles", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["images"] == 4 and report["classes"] == [1, 2] and report["per_class"] == 2 and report["seed"] == 0
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)
    singles = sorted(p.name for p in (tmp_path / "singles").iterdir())
    assert singles == ["0000_class1.png", "0001_class1.png", "0002_class2.png", "0003_class2.png"]
    # same seed, same grid
    r2 = run_cli("generate", "--model", converted, "--classes", "1", "2", "-n", "2", "--seed", "0",
                 "--cfg", "4", "--top-k", "8", "--top-p", "0.9", "--out", tmp_path / "grid2.png", "-q")
    assert r2.returncode == 0
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "grid2.png").read_bytes()


def test_generate_streams_a_multi_batch_request_and_caps_the_grid(converted, tmp_path):
    r = run_cli("generate", "--model", converted, "--classes", "1", "2", "3", "-n", "5", "--batch-size", "4",
                "--grid-max", "6", "--out", tmp_path / "grid.png", "--save-images", tmp_path / "all", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["images"] == 15 and report["grid_images"] == 6 and report["batches"] == 4
    assert "shows the first 6 of 15 images (all 15 are in" in r.stderr
    assert (len(list((tmp_path / "all").iterdir())) == 15
            and Image.open(tmp_path / "grid.png").size == (5 * 18 + 2, 2 * 18 + 2))


def test_generate_a_batch_that_cannot_fit_is_one_line(converted, tmp_path):
    """A real allocation failure (the address space capped at 6 GB; the KV cache of 200000 CFG pairs needs 6.5 GB)."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)); "
            "from argen.cli import main; sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", code, "generate", "--model", str(converted), "--classes", "1",
                        "-n", "200000", "--batch-size", "200000", "--out", str(tmp_path / "g.png"), "-q"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (r.stderr.strip().splitlines() == [r.stderr.strip()]
            and "a batch of 200000 images does not fit in cpu memory" in r.stderr)


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "llamagen-gpt-b" in out and "c2i_XXL_384.pt" in out and "vq_ds16_c2i.pt" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--model", "no-such-model"],
         "unknown model 'no-such-model'. Known models: shapes-llamagen, shapes-var"),
        (["generate", "--classes", "99"], "class id(s) [99] out of range"),
        (["generate", "--top-p", "1.5"], "top_p must lie in (0, 1]"),
        (["generate", "--top-p", "0"], "top_p must lie in (0, 1]"),
        (["generate", "--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["generate", "--cfg", "-2"], "cfg_scale must be a finite number >= 0"),
        (["generate", "--per-class", "0"], "--per-class must be >= 1"),
        (["generate", "--sampler", "nope"], "unknown sampler 'nope'"),
        (["generate", "--dtype", "int3"], "unknown dtype 'int3'"),
        (["train", "tokenizer", "--kind", "kl", "--encoder", "patch", "--out", "x"], "--encoder is for VQ tokenizers"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(converted, capsys, args, message):
    if args[0] == "generate" and "--model" not in args:
        args = args[:1] + ["--model", str(converted), "-q"] + args[1:]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("argen: error: ") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_checkpoint_in_convert_subprocess(official_ckpts, tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    r = run_cli("convert", "llamagen", "--gpt-ckpt", tmp_path / "broken.pt", "--vq-ckpt", official_ckpts / "vq.pt",
                "--gpt-config", official_ckpts / "gpt.json", "--vq-config", official_ckpts / "vq.json",
                "--out", tmp_path / "o")
    assert r.returncode == 2
    assert r.stderr.startswith("argen: error: ") and "broken.pt" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("convert", "llamagen", "--gpt-ckpt", official_ckpts / "vq.pt", "--vq-ckpt", official_ckpts / "vq.pt",
                "--gpt-config", official_ckpts / "gpt.json", "--vq-config", official_ckpts / "vq.json",
                "--out", tmp_path / "o")
    assert r.returncode == 2 and "missing keys" in r.stderr and len(r.stderr.strip().splitlines()) == 1
