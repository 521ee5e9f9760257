"""`argen bench` over several models: each model's own report, then their plain rows side by side."""
import json
import subprocess
import sys

import pytest


def test_argen_bench_compares_models_in_one_process(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "argen", "bench", "--model", "shapes-llamagen", "shapes-flowar",
                        "--repeats", "1", "--no-warmup", "-b", "1", "2", "--classes", "star", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "model against model" in r.stdout
    report = json.loads(out.read_text())
    assert report["benchmark"] == "models" and report["baseline"] == "shapes-llamagen"
    llamagen, flowar = report["reports"]
    # default samplers: everything the model supports (token-wise: sjd and flow too; FlowAR: plain only)
    assert {x["sampler"] for x in llamagen["results"]} == {"ar", "sjd", "flow"}
    assert {x["sampler"] for x in flowar["results"]} == {"ar"} and flowar["warmup"] is False
    rows = {(x["model"], x["batch_size"]): x for x in report["comparison"]}
    assert set(rows) == {(m, b) for m in ("shapes-llamagen", "shapes-flowar") for b in (1, 2)}
    for b in (1, 2):
        assert rows[("shapes-llamagen", b)]["speed_vs_first"] == 1.0
        ar = next(x for x in flowar["results"] if x["sampler"] == "ar" and x["batch_size"] == b)
        base = rows[("shapes-llamagen", b)]["images_per_s"]
        assert rows[("shapes-flowar", b)]["speed_vs_first"] == pytest.approx(ar["images_per_s"] / base)
    assert rows[("shapes-flowar", 1)]["tokens_per_image"] == flowar["tokens_per_image"] > 0


def test_argen_bench_rejects_a_sampler_the_model_lacks(tmp_path):
    r = subprocess.run([sys.executable, "-m", "argen", "bench", "--model", "shapes-flowar", "-s", "sjd",
                        "--repeats", "1", "--no-warmup", "--out", str(tmp_path / "b.json")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "sjd" in r.stderr and "Traceback" not in r.stderr


def test_argen_bench_puts_a_student_next_to_its_teacher(tmp_path):
    """A distilled student's baseline is its own default sampler (dd, one step); a sampler list serves the
    teacher and the student alike (each runs those that drive it); one that drives neither is an error."""
    out = tmp_path / "bench.json"
    args = [sys.executable, "-m", "argen", "bench", "--model", "shapes-llamagen", "shapes-llamagen-dd", "--repeats",
            "1", "--no-warmup", "-b", "2", "--classes", "star", "--out", str(out)]
    r = subprocess.run([*args, "-s", "sjd", "dd:steps=2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    teacher, student = json.loads(out.read_text())["reports"]
    assert teacher["baseline"] == "ar" and [x["sampler"] for x in teacher["results"]] == ["ar", "sjd"]
    assert student["baseline"] == "dd" and [x["sampler"] for x in student["results"]] == ["dd", "dd:steps=2"]
    assert [x["forward_passes"] for x in student["results"]] == [1, 2] and "vs dd" in r.stdout
    r = subprocess.run([*args[:5], "shapes-flowar", *args[6:], "-s", "sjd"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "drive none of" in r.stderr
