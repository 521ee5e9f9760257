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
    with pytest.raises(ConfigError, match=r"the scale-wise teacher \(64 codes, 30 tokens\) is not this student's"):
        S.sample(student, [1], sampler="dd", teacher=var)
    teacher, _, _ = TINY_PIPELINES["llamagen"]()
    with pytest.raises(ConfigError, match=r"teacher_start must be an integer in \[0, 4\]"):
        S.sample(student, [1], sampler="dd", teacher=teacher, t_list=[0, 5], teacher_start=5)


@pytest.mark.parametrize("run, teacher_start, t_list, top_k, top_p", [
    ("combine_ts1_sampled", 1, [0, 3], 16, 0.95), ("combine_ts0_greedy", 0, [0, 2], 1, 1.0)])
def test_teacher_involved_runs_of_the_var_student(run, teacher_start, t_list, top_k, top_p):
    """combine_sample.py with VAR's teacher (cfg 2 on VAR's ramp, top-k, top-p; draws from a generator seeded
    12 as the fixture's) and the official unmasked prefix pass: the teacher's ids, the final sequence, the image."""
    io = fixture_io("dd_var_tiny")
    student, vae, _ = TINY_PIPELINES["dd-var"]()
    teacher, _, _ = TINY_PIPELINES["var"]()
    options = dict(teacher=teacher, teacher_start=teacher_start, t_list=t_list, split=t_list[1], noise=io["noise"],
                   cfg_scale=2.0, top_k=top_k, top_p=top_p)
    x, _ = S.sample(student, io["labels"], sampler="dd", teacher_prefix="unmasked",
                    generator=torch.Generator().manual_seed(12), **options)
    n_prefix = 1 if teacher_start else 0
    ids = student.nearest_codes(x)[:, n_prefix : n_prefix + io[f"{run}.teacher.ids"].shape[1]]
    assert torch.equal(ids, io[f"{run}.teacher.ids"])
    torch.testing.assert_close(x, io[f"{run}.x_final"], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(ARPipeline(student, vae).decode(x), io[f"{run}.image"].mul(2).sub(1).clamp(-1, 1),
                               atol=ATOL, rtol=ATOL)


def test_a_block_causal_prefix_is_teacher_forcing():
    """scale_by_scale with a prefix read block-causally (the default) gives the logits of the ordinary loop
    whose first scales are forced to the prefix; the official unmasked pass gives other logits."""
    from argen.samplers.logits import SamplingOptions
    from argen.samplers.scales import scale_by_scale

    teacher, _, _ = TINY_PIPELINES["var"]()
    cond = torch.tensor([3, 7])
    opts = SamplingOptions(cfg_scale=2.0, cfg_schedule="var", greedy=True)
    prefix = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))  # scales 1x1 and 2x2
    seen = {}

    def recorder(tag, forced=None):
        def pick(si, logits):
            seen.setdefault(tag, []).append(logits)
            return forced[:, [0, 1, 5][si] : [1, 5][si]] if forced is not None and si < 2 else logits.argmax(-1)
        return pick

    common = dict(more_smooth=False, progress=False, callback=None, callback_every=1)
    with torch.no_grad():
        forced, _ = scale_by_scale(teacher, cond, opts, recorder("forced", prefix), "t", None, **common)
        causal, _ = scale_by_scale(teacher, cond, opts, recorder("causal"), "t", None, prefix=prefix, **common)
        unmasked, _ = scale_by_scale(teacher, cond, opts, recorder("unmasked"), "t", None, prefix=prefix,
                                     prefix_pass="unmasked", **common)
    assert torch.equal(causal, forced) and torch.equal(causal[:, :5], prefix)
    torch.testing.assert_close(seen["causal"][0], seen["forced"][2], atol=1e-5, rtol=1e-5)
    assert (seen["unmasked"][0] - seen["causal"][0]).abs().max() > 1e-3
