"""The dd sampler through the public API (argen.samplers.sample, ARPipeline, the CLI): the official few-step
runs from the fixtures' recorded noise, the released defaults, and bad options."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_PIPELINES, fixture_config, fixture_io, fixture_weights

import argen.samplers as S
from argen.errors import ConfigError
from argen.pipeline import ARPipeline

ATOL = 1e-5
# fixture -> (its tiny pipeline, the split of its runs, the runs' t_lists)
RUNS = {
    "dd_llamagen_tiny": ("dd-llamagen", 5, {"sample_1step": [0], "sample_2step": [0, 5], "sample_3step": [0, 3, 9]}),
    "dd_var_tiny": ("dd-var", 2, {"sample_1step": [0], "sample_2step": [0, 2], "sample_3step": [0, 1, 3]}),
}


@pytest.fixture(scope="module", params=list(RUNS))
def case(request):
    name = request.param
    family, split, runs = RUNS[name]
    gen, tok, _ = TINY_PIPELINES[family]()
    return name, ARPipeline(gen, tok), split, runs, fixture_io(name)


def test_official_runs_from_the_recorded_noise(case):
    """sample(..., noise=) and the pipeline's decoding give the official final sequence and image."""
    name, pipe, split, runs, io = case
    for run, t_list in runs.items():
        x, stats = S.sample(pipe.generator, io["labels"], sampler="dd", t_list=t_list, split=split, noise=io["noise"])
        torch.testing.assert_close(x, io[f"{run}.x_final"], atol=ATOL, rtol=ATOL, msg=f"{name} {run}")
        assert stats.forward_passes == len(t_list) and stats.sampler == "dd"
        images = pipe.generate(io["labels"].tolist(), output_type="pt", t_list=t_list, split=split,
                               noise=io["noise"])
        expected = io[f"{run}.image"].mul(2).sub(1).clamp(-1, 1)  # the official images are (out + 1) / 2
        torch.testing.assert_close(images, expected, atol=ATOL, rtol=ATOL, msg=f"{name} {run} image")


def test_steps_use_the_released_positions(case):
    name, pipe, split, runs, io = case
    gen = pipe.generator
    two = S.sample(gen, io["labels"], sampler="dd", steps=2, noise=io["noise"])[0]
    assert torch.equal(two, S.sample(gen, io["labels"], sampler="dd", t_list=gen.default_t_list(2),
                                     split=gen.default_split, noise=io["noise"])[0])
    one = S.sample(gen, io["labels"], noise=io["noise"])[0]  # dd is the default sampler of a student
    assert torch.equal(one, S.sample(gen, io["labels"], sampler="dd", t_list=[0], noise=io["noise"])[0])
    assert not torch.equal(one, two)


@pytest.mark.parametrize("options, match", [
    ({"cfg_scale": 4.0}, "dd sampler takes no cfg_scale"),
    ({"top_k": 5, "temperature": 0.5}, "takes no top_k / temperature"),
    ({"t_list": [1, 2]}, "must start at 0"),
    ({"t_list": [0, 2, 2]}, "must be increasing"),
    ({"t_list": [0, 99]}, r"positions lie in \[0, "),
    ({"t_list": []}, "non-empty list of integers"),
    ({"steps": 3}, "1 or 2 steps"),
    ({"steps": 1, "t_list": [0, 1]}, "steps=1 but t_list has 2 positions"),
    ({"split": -1}, "split must be an integer in"),
    ({"noise": torch.zeros(2, 3, 8)}, r"noise must be a float tensor \(2, "),
    ({"teacher": torch.nn.Linear(1, 1)}, "Linear is not an argen generator"),
])
def test_bad_options_are_one_line_errors(case, options, match):
    pipe, io = case[1], case[4]
    with pytest.raises(ConfigError, match=match):
        S.sample(pipe.generator, io["labels"], sampler="dd", **options)


def test_a_student_refuses_another_tokenizer():
    from argen.tokenizers import VQConfig, VQTokenizer

    gen, _, _ = TINY_PIPELINES["dd-llamagen"]()
    other = VQTokenizer(VQConfig(codebook_size=32, codebook_embed_dim=8, encoder_ch_mult=[1, 1, 2],
                                 decoder_ch_mult=[1, 1, 2], z_channels=32, ch=32, num_res_blocks=1))
    with pytest.raises(ConfigError, match="does not fit this student"):
        ARPipeline(gen, other)


def test_cli_converts_a_var_student_and_generates_in_two_steps(tmp_path):
    from test_cli import run_cli

    cfg = fixture_config("dd_var_tiny")
    torch.save({"trainer": {"ema_parameters": fixture_weights("dd_var_tiny")}}, tmp_path / "dd.pth")
    torch.save(fixture_weights("var_tiny_vqvae"), tmp_path / "vae.pth")
    vae = {k: v for k, v in cfg["vae"].items() if k != "image_size"}
    dd = {k: cfg["dd"][k] for k in ("depth", "embed_dim", "num_heads", "num_classes", "patch_nums")}
    (tmp_path / "vae.json").write_text(json.dumps(vae))
    (tmp_path / "dd.json").write_text(json.dumps({**dd, "drop_path_rate": 0.0, "two_step_t": 2, "loss_split_t": 2}))
    out = tmp_path / "student"
    r = run_cli("convert", "dd-var", "--dd-ckpt", tmp_path / "dd.pth", "--vae-ckpt", tmp_path / "vae.pth",
                "--dd-config", tmp_path / "dd.json", "--vae-config", tmp_path / "vae.json", "--out", out)
    assert r.returncode == 0, r.stderr
    r = run_cli("generate", "--model", out, "--classes", "3", "7", "--steps", "2", "--seed", "0",
                "--out", tmp_path / "grid.png", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["images"] == 2 and (tmp_path / "grid.png").is_file()
    r = run_cli("generate", "--model", out, "--classes", "3", "--cfg", "3", "--out", tmp_path / "x.png", "-q")
    assert r.returncode == 2 and "takes no cfg_scale" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("run, teacher_start, top_k", [("combine_ts4_sampled", 4, 32), ("combine_ts0_greedy", 0, 1)])
def test_teacher_involved_runs_of_the_llamagen_student(run, teacher_start, top_k):
    """eval_combine_sample.py: a student step, the teacher from the prefix to t_list[1] (cfg 2, top-k; its
    draws from a generator seeded as the official global RNG), a second student step. The teacher's ids and the
    final sequence and image are the official ones."""
    io = fixture_io("dd_llamagen_tiny")
    student, vq, _ = TINY_PIPELINES["dd-llamagen"]()
    teacher, _, _ = TINY_PIPELINES["llamagen"]()
    rng = torch.Generator().manual_seed(22)
    x, stats = S.sample(student, io["labels"], sampler="dd", teacher=teacher, teacher_start=teacher_start,
                        t_list=[0, 10], split=12, noise=io["noise"], cfg_scale=2.0, top_k=top_k, generator=rng)
    assert torch.equal(student.nearest_codes(x)[:, :10], io[f"{run}.teacher.index_sample"].long())
    torch.testing.assert_close(x, io[f"{run}.x_final"], atol=ATOL, rtol=ATOL)
    pipe = ARPipeline(student, vq)
    torch.testing.assert_close(pipe.decode(x), io[f"{run}.image"].mul(2).sub(1).clamp(-1, 1), atol=ATOL, rtol=ATOL)
    # the student's passes, the teacher's prefill, prefix window and single-token steps up to position 9
    assert stats.forward_passes == {4: 1 + 1 + 1 + 5 + 1, 0: 1 + 9 + 1}[teacher_start]


def test_teacher_involved_sampling_checks_its_teacher():
    student, _, _ = TINY_PIPELINES["dd-llamagen"]()
    var, _, _ = TINY_PIPELINES["var"]()
    with pytest.raises(ConfigError, match="token-wise teacher .* a 'scale' teacher"):
        S.sample(student, [1], sampler="dd", teacher=var)
    teacher, _, _ = TINY_PIPELINES["llamagen"]()
    with pytest.raises(ConfigError, match=r"teacher_start must be an integer in \[0, 4\]"):
        S.sample(student, [1], sampler="dd", teacher=teacher, t_list=[0, 5], teacher_start=5)
