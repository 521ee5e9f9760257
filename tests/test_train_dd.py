"""`argen train dd`: flow pairs deterministic by index and resumable, the student initialised from its teacher,
training that lowers the loss, the CLI end to end (load, sample at 1 and 2 steps, --resume), bad input."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from conftest import TINY_PIPELINES

import argen
from argen import ARPipeline
from argen.cli import main
from argen.errors import ConfigError
from argen.generators.dd_llamagen import DDLlamaGen
from argen.generators.dd_var import DDVAR
from argen.samplers import sample
from argen.train.dd import dd_loss, draw_t, student_from_teacher, train_dd
from argen.train.dd_pairs import PAIRS_DIR, PairsDataset, make_pairs
from argen.train.loop import TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def _pipe(family: str) -> ARPipeline:
    torch.manual_seed(0)
    gen, tok, opts = TINY_PIPELINES[family]()
    return ARPipeline(gen.eval(), tok.eval(), defaults=opts, name=f"{family}-tiny")


@pytest.fixture(scope="module")
def llamagen():
    return _pipe("llamagen")


@pytest.fixture(scope="module")
def var():
    return _pipe("var")


def _same(a: PairsDataset, b: PairsDataset) -> None:
    for k in ("noise", "ids", "labels"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k


# -- pairs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llamagen", "var"])
def test_pairs_depend_on_the_index_only(family, tmp_path):
    pipe = _pipe(family)
    make_pairs(pipe, tmp_path / "a", 6, seed=3, shard_size=6, batch_size=6, progress=False)
    make_pairs(pipe, tmp_path / "b", 6, seed=3, shard_size=4, batch_size=1, progress=False)
    a, b = PairsDataset(tmp_path / "a"), PairsDataset(tmp_path / "b")
    _same(a, b)
    assert a.noise.dtype == torch.float16 and a.ids.dtype == torch.int16
    assert a.noise.shape == (6, pipe.generator.seq_len, pipe.generator.code_vectors.shape[1])
    # the ids are the flow sampler's image of the stored noise, with the teacher's default options
    codes, _ = sample(pipe.generator, a.labels, sampler="flow", noise=a.noise.float(), **pipe.defaults)
    assert torch.equal(codes, a.ids.long())
    # a longer request keeps the first pairs (its last short shard is remade)
    make_pairs(pipe, tmp_path / "b", 9, seed=3, shard_size=4, batch_size=4, progress=False)
    c = PairsDataset(tmp_path / "b")
    assert len(c) == 9 and torch.equal(c.ids[:6], a.ids)
    # a shorter one reads the first rows of the longer shards and remakes nothing
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "b" / PAIRS_DIR).glob("*.safetensors")}
    make_pairs(pipe, tmp_path / "b", 5, seed=3, shard_size=4, batch_size=4, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    d = PairsDataset(tmp_path / "b", 5)
    assert len(d) == 5 and len(PairsDataset(tmp_path / "b")) == 9 and torch.equal(d.ids, a.ids[:5])
    # items are read from the shards one by one, as the tensors of the whole set hold them
    for i in (0, 3, 4, 8):
        noise, ids, label = c[i]
        assert torch.equal(noise, c.noise[i].float()) and torch.equal(ids, c.ids[i].long()) and label == c.labels[i]
    with pytest.raises(IndexError):
        c[9]
    with pytest.raises(ConfigError, match="holds 9 pairs, 10 asked for"):
        PairsDataset(tmp_path / "b", 10)


def test_pairs_resume_and_refuse_another_layout(llamagen, tmp_path):
    make_pairs(llamagen, tmp_path, 8, shard_size=4, batch_size=4, progress=False)
    shards = sorted((tmp_path / PAIRS_DIR).glob("*.safetensors"))
    before = PairsDataset(tmp_path)
    kept = shards[0].stat().st_mtime_ns
    shards[1].unlink()
    make_pairs(llamagen, tmp_path, 8, shard_size=4, batch_size=4, progress=False)
    _same(before, PairsDataset(tmp_path))
    assert shards[0].stat().st_mtime_ns == kept  # a finished shard is not remade
    for other in (dict(seed=1), dict(shard_size=2), dict(options={"cfg_scale": 2.0})):
        with pytest.raises(ConfigError, match="another teacher or layout"):
            make_pairs(llamagen, tmp_path, 8, progress=False, **{"shard_size": 4, **other})
    # a shard of another teacher dropped into the folder
    other = copy.deepcopy(llamagen)
    with torch.no_grad():
        other.generator.output.weight.add_(0.1)
    make_pairs(other, tmp_path / "other", 8, shard_size=4, batch_size=4, progress=False)
    shutil.copy(tmp_path / "other" / PAIRS_DIR / shards[1].name, shards[1])
    with pytest.raises(ConfigError, match="another teacher or seed") as e:
        make_pairs(llamagen, tmp_path, 8, shard_size=4, batch_size=4, progress=False)
    assert "\n" not in str(e.value)


# -- the student -------------------------------------------------------------------------------------------
def _shared(student, teacher) -> list[str]:
    s, t = student.state_dict(), teacher.state_dict()
    return [k for k in s if k in t and s[k].shape == t[k].shape and s[k].is_floating_point()]


def test_llamagen_student_starts_as_the_teacher(llamagen):
    """Output j of the student reads inputs 0..j at the teacher's positions 1..j+1: with zero noise/data
    embeddings and an embedding that maps each code's vector to the teacher's row, its logits at j are the
    teacher's teacher-forced logits for token j + 1, whatever t."""
    teacher = copy.deepcopy(llamagen.generator)
    book = teacher.code_vectors
    with torch.no_grad():  # a teacher whose token embedding is affine in the code vectors: the fit is exact
        teacher.tok_embeddings.weight.copy_(book @ torch.randn(book.shape[1], teacher.config.dim) + 0.1)
    student, report = student_from_teacher(teacher, llamagen.tokenizer)
    assert isinstance(student, DDLlamaGen) and report["tok_embed_r2"] == pytest.approx(1.0, abs=1e-6)
    keys = _shared(student, teacher)
    assert len(keys) > 10 and all(torch.equal(student.state_dict()[k], teacher.state_dict()[k]) for k in keys)
    ids = torch.randint(0, teacher.config.vocab_size, (3, teacher.seq_len))
    labels = torch.tensor([0, 4, 9])
    with torch.no_grad():
        want = teacher(ids, labels)[:, 1:]
        for t in (0, 5):
            tokens, logits = student(book[ids], labels, torch.full((3,), float(t)))
            torch.testing.assert_close(logits[:, :-1], want, atol=1e-4, rtol=1e-4)
            assert torch.equal(tokens, torch.zeros_like(tokens))  # the continuous head starts at zero
    assert student.default_t_list(2) == [0, 5] and student.default_split == 5  # 80/256 of 16 tokens


def test_var_student_init(var):
    teacher = var.generator
    student, _ = student_from_teacher(teacher, var.tokenizer, two_step_t=2, split=3)
    assert isinstance(student, DDVAR) and student.default_t_list(2) == [0, 2] and student.default_split == 3
    keys = _shared(student, teacher)
    assert any(k.startswith("blocks.") for k in keys) and "head.weight" in keys
    assert all(torch.equal(student.state_dict()[k], teacher.state_dict()[k]) for k in keys)
    # the grown tables: the start scale, then token j at the teacher's slot that predicts token j
    assert torch.equal(student.pos_1LC[:, 1:], teacher.pos_1LC) and torch.equal(student.pos_1LC[:, 0],
                                                                                teacher.pos_1LC[:, 0])
    assert torch.equal(student.lvl_embed.weight[1:], teacher.lvl_embed.weight)
    assert not student.n_d_embed.weight.any() and not student.final_layer_conti.linear.weight.any()


@pytest.mark.parametrize("family", ["llamagen", "var"])
def test_a_few_steps_lower_the_loss(family, tmp_path):
    pipe = _pipe(family)
    make_pairs(pipe, tmp_path, 8, shard_size=8, batch_size=8, progress=False)
    data = PairsDataset(tmp_path)
    student, _ = student_from_teacher(pipe.generator, pipe.tokenizer)
    torch.manual_seed(0)
    t = draw_t(student, len(data), 0.5)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, logs = dd_loss(student, student, data.noise.float(), data.ids.long(), data.labels, t)
        assert set(logs) == {"ce", "mse"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_draw_t_mixes_restarts():
    student = type("S", (), {"num_t": 10})()
    torch.manual_seed(0)
    t = draw_t(student, 4000, 0.25)
    assert set(t.long().tolist()) == set(range(10)) and abs(float((t == 0).float().mean()) - 0.25) < 0.03


# -- the CLI -----------------------------------------------------------------------------------------------
def _train(teacher, out, *extra: str) -> int:
    return main(["train", "dd", "--teacher", str(teacher), "--pairs", "8", "--out", str(out), "--steps", "3",
                 "--batch-size", "4", "--shard-size", "4", "--pair-batch-size", "4", "--warmup-steps", "1",
                 "--checkpoint-every", "2", "-q", *extra])


def test_cli_trains_a_loadable_student_and_resumes(llamagen, tmp_path, capsys):
    llamagen.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "dd"
    assert _train(tmp_path / "teacher", out, "--two-step-t", "4", "--cfg", "2.0") == 0
    meta = json.loads((out / PAIRS_DIR / "meta.json").read_text())
    assert meta["options"]["cfg_scale"] == 2.0 and meta["options"]["top_k"] == 8  # flag over the teacher default
    pipe = argen.load(str(out))
    assert isinstance(pipe.generator, DDLlamaGen) and pipe.generator.default_t_list(2) == [0, 4]
    for steps in (1, 2):
        images = pipe.generate([0, 3], seed=0, sampler="dd", steps=steps, output_type="pt")
        assert images.shape[:2] == (2, 3) and torch.isfinite(images).all()
    report = json.loads((out / "train.json").read_text())
    assert report["steps"] == 3 and set(report["final_losses"]) == {"ce", "mse", "loss"}
    assert (out / "samples" / "dd_2step.png").is_file()
    assert _train(tmp_path / "teacher", out, "--two-step-t", "4", "--cfg", "2.0", "--steps", "5", "--resume") == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 5
    capsys.readouterr()
    # --resume of another run (another restart point) is a one-line error
    assert _train(tmp_path / "teacher", out, "--two-step-t", "3", "--cfg", "2.0", "--steps", "6", "--resume") == 2
    err = capsys.readouterr().err
    assert err.startswith("argen: error:") and "another configuration" in err and err.count("\n") == 1


def test_var_teacher_through_the_cli(var, tmp_path):
    var.save_pretrained(tmp_path / "teacher")
    assert _train(tmp_path / "teacher", tmp_path / "dd", "--steps", "2") == 0
    pipe = argen.load(str(tmp_path / "dd"))
    assert isinstance(pipe.generator, DDVAR)
    assert pipe.generate([1], seed=0, sampler="dd", steps=2, output_type="pt").shape[0] == 1


@pytest.mark.parametrize("args, words", [
    (["--teacher", "shapes-mar", "--pairs", "4"], "token-wise"),
    (["--teacher", "shapes-llamagen", "--pairs", "0"], "--pairs must be"),
])
def test_bad_input_is_one_line(args, words, tmp_path, capsys):
    assert main(["train", "dd", *args, "--out", str(tmp_path / "x"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("argen: error:") and words in err and err.count("\n") == 1


def test_pairs_of_another_seed_through_the_cli(llamagen, tmp_path, capsys):
    llamagen.save_pretrained(tmp_path / "teacher")
    make_pairs(argen.load(str(tmp_path / "teacher")), tmp_path / "dd", 4, seed=7, shard_size=4, progress=False)
    assert _train(tmp_path / "teacher", tmp_path / "dd") == 2
    err = capsys.readouterr().err
    assert "another teacher or layout" in err and err.count("\n") == 1



class _Killed(Exception):
    pass


def test_resume_ends_where_an_uninterrupted_run_does(llamagen, tmp_path, monkeypatch):
    """A run killed right after its step-2 checkpoint and resumed gives the weights of an uninterrupted one."""
    from safetensors.torch import load_file

    import argen.train.dd as dd_mod

    def run(out, resume=False):
        settings = TrainSettings(out=str(out), steps=4, batch_size=4, warmup_steps=1, checkpoint_every=2,
                                 progress=False, resume=resume)
        return train_dd(settings, llamagen, 8, shard_size=4, pair_batch_size=4)

    run(tmp_path / "a")
    save = dd_mod.save_checkpoint

    def save_then_die(out, step, *a, **kw):
        save(out, step, *a, **kw)
        if step == 2:
            raise _Killed

    monkeypatch.setattr(dd_mod, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        run(tmp_path / "b")
    monkeypatch.undo()
    torch.manual_seed(12345)  # what ran before in the process must not matter
    run(tmp_path / "b", resume=True)
    a, b = (load_file(str(tmp_path / d / "generator" / "model.safetensors")) for d in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_bad_sampling_option_leaves_no_pairs_meta(llamagen, tmp_path):
    with pytest.raises(ConfigError, match="unknown option"):
        make_pairs(llamagen, tmp_path, 4, options={"odesteps": 4}, progress=False)
    assert not (tmp_path / PAIRS_DIR / "meta.json").exists()
    make_pairs(llamagen, tmp_path, 4, options={"ode_steps": 8}, progress=False)  # the corrected rerun works
    assert len(PairsDataset(tmp_path)) == 4
