"""image-GPT and its palette: exact against transformers' ImageGPTForCausalImageModeling and
ImageGPTImageProcessor (transformers is a dev dependency, used here only), the released layouts, loading
(folders, files, the zoo, `argen convert igpt`), unconditional generation and the errors a user meets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_igpt
from transformers import ImageGPTConfig as HFConfig
from transformers import ImageGPTForCausalImageModeling, ImageGPTImageProcessor

import argen
from argen import ARPipeline, samplers
from argen.cli import main
from argen.convert.igpt import igpt_config, load_igpt, load_igpt_palette
from argen.errors import CheckpointError, ConfigError
from argen.generators.igpt import PRESETS, ImageGPT
from argen.tokenizers.palette import PaletteTokenizer, kmeans, read_palette

pytestmark = pytest.mark.usefixtures("one_thread")

# small, wide-MLP, medium-shaped (8 heads of 16) and large-shaped (16 heads) tiny configurations, other
# activations and the attention-scaling options the config offers
CONFIGS = {
    "small": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=17),
    "wide-mlp": dict(n_embd=48, n_layer=3, n_head=2, n_positions=16, vocab_size=9, n_inner=80),
    "medium-shaped": dict(n_embd=128, n_layer=4, n_head=8, n_positions=36, vocab_size=33),
    "large-shaped": dict(n_embd=96, n_layer=5, n_head=16, n_positions=25, vocab_size=65,
                         activation_function="gelu_new", scale_attn_by_inverse_layer_idx=True),
    "unscaled-upcast": dict(n_embd=32, n_layer=2, n_head=2, n_positions=16, vocab_size=5, scale_attn_weights=False,
                            reorder_and_upcast_attn=True, activation_function="gelu"),
}


def hf_model(args: dict, seed: int = 0) -> ImageGPTForCausalImageModeling:
    """transformers' model with every weight drawn (norm weights too: nothing stays at its init)."""
    torch.manual_seed(seed)
    model = ImageGPTForCausalImageModeling(HFConfig(**args, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08).add_(1.0 if p.dim() == 1 and p.shape[0] == args["n_embd"] else 0.0)
    return model


def ours_from(hf: ImageGPTForCausalImageModeling, args: dict) -> ImageGPT:
    return load_igpt(hf.state_dict(), dict(args))


def start(batch: int, vocab_size: int) -> torch.Tensor:
    return torch.full((batch, 1), vocab_size - 1)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_teacher_forced_logits_equal_transformers(name):
    args = CONFIGS[name]
    hf = hf_model(args)
    ours = ours_from(hf, args)
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, args["vocab_size"] - 1, (3, args["n_positions"]), generator=g)
    with torch.no_grad():
        ref = hf(torch.cat([start(3, args["vocab_size"]), pixels[:, :-1]], 1)).logits
        got = ours(pixels, ours.null_condition(3) if ours.conditional else torch.zeros(3, dtype=torch.long))
    assert got.shape == ref.shape == (3, args["n_positions"], args["vocab_size"] - 1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["small", "medium-shaped", "large-shaped"])
def test_a_greedy_run_equals_transformers_generate(name):
    """Token by token through argen's KV cache against transformers' generate (greedy): the same pixels
    and, at every step, the same logits; argen's ar and sjd samplers give the same pixels."""
    args = CONFIGS[name]
    hf = hf_model(args, seed=2)
    ours = ours_from(hf, args)
    n, b = args["n_positions"], 2
    out = hf.generate(input_ids=start(b, args["vocab_size"]), max_length=n + 1, do_sample=False, output_logits=True,
                      return_dict_in_generate=True, pad_token_id=0)
    ref_pixels, ref_logits = out.sequences[:, 1:], torch.stack(out.logits, 1)
    cond = torch.zeros(b, dtype=torch.long)
    cache = ours.new_cache(b)
    logits = [ours.prefill(cond, cache)]
    for i in range(n - 1):
        logits.append(ours.decode(logits[-1].argmax(-1, keepdim=True), cache)[:, 0])
    got = torch.stack(logits, 1)
    torch.testing.assert_close(got, ref_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.argmax(-1), ref_pixels)
    for sampler, opts in (("ar", {}), ("sjd", {"window": 7})):
        codes, _ = samplers.sample(ours, [0] * b, sampler=sampler, greedy=True, **opts)
        assert torch.equal(codes, ref_pixels), sampler


@pytest.mark.parametrize("preset", list(PRESETS))
def test_released_configurations_have_transformers_keys_and_shapes(preset):
    """The state dict of each release (built on the meta device, nothing allocated) equals transformers'."""
    with torch.device("meta"):
        ref = ImageGPTForCausalImageModeling(HFConfig(**PRESETS[preset]))
    ours = ImageGPT.from_config(igpt_config(None, preset=preset), device="meta")
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def test_palette_ids_equal_the_image_processor_on_random_images():
    rng = np.random.RandomState(0)
    clusters = rng.uniform(-1, 1, (512, 3)).astype(np.float32)
    images = rng.randint(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    processor = ImageGPTImageProcessor(clusters=clusters, do_resize=False)
    ref = processor(images=list(images), return_tensors="pt")["input_ids"]
    pixels = processor(images=list(images), return_tensors="pt", do_color_quantize=False)["pixel_values"]
    tok = PaletteTokenizer.from_colours(clusters)
    assert torch.equal(tok.encode(pixels).flatten(1), ref)
    # argen's own uint8 -> [-1, 1] conversion gives the same ids on these images
    assert torch.equal(tok.encode(torch.from_numpy(images).permute(0, 3, 1, 2) / 127.5 - 1.0).flatten(1), ref)
    decoded = tok.decode(ref.view(4, 32, 32))
    assert torch.equal(decoded, torch.from_numpy(clusters)[ref.view(4, 32, 32)].permute(0, 3, 1, 2))


def write_release(folder, args: dict, *, bin_file: bool = False, seed: int = 0):
    """A transformers-format release in ``folder``: config.json, the weights, preprocessor_config.json."""
    hf = hf_model(args, seed)
    hf.save_pretrained(folder)
    if bin_file:
        (folder / "model.safetensors").unlink()
        torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    clusters = np.random.RandomState(seed).uniform(-1, 1, (args["vocab_size"] - 1, 3)).astype(np.float32)
    ImageGPTImageProcessor(clusters=clusters, size={"height": 8, "width": 8}).save_pretrained(folder)
    return hf, clusters


@pytest.mark.parametrize("bin_file", [False, True])
def test_load_igpt_reads_a_release_folder_strictly(tmp_path, bin_file):
    args = CONFIGS["small"]
    hf, clusters = write_release(tmp_path, args, bin_file=bin_file)
    gen = load_igpt(tmp_path)
    pixels = torch.randint(0, 16, (2, 64))
    with torch.no_grad():
        ref = hf(torch.cat([start(2, 17), pixels[:, :-1]], 1)).logits
    torch.testing.assert_close(gen(pixels, torch.zeros(2, dtype=torch.long)), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(load_igpt_palette(tmp_path / "preprocessor_config.json").clusters, torch.from_numpy(clusters))
    state = hf.state_dict()
    state.pop("transformer.h.1.mlp.c_fc.bias")
    state["transformer.h.9.attn.c_attn.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing.*h\.1\.mlp\.c_fc\.bias(?s:.*)unexpected.*h\.9"):
        load_igpt(state, dict(args))
    with pytest.raises(ConfigError, match="config.json"):
        load_igpt(state)


def test_zoo_igpt_loads_from_a_checkpoint_dir_and_generates_unconditionally(tmp_path):
    args = dict(CONFIGS["small"], n_positions=1024, vocab_size=513)  # a narrow model of the released 32 x 32
    hf, _ = write_release(tmp_path, args, bin_file=True)
    pipe = argen.load("igpt-s", checkpoint_dir=tmp_path)
    assert not pipe.conditional and pipe.image_size == 32 and pipe.defaults["top_k"] == 40
    images = pipe.generate(num_images=2, seed=0)
    assert len(images) == 2 and images[0].size == (32, 32)
    # every generated pixel is a palette colour
    colours = {tuple(c) for c in np.asarray(images[0]).reshape(-1, 3).tolist()}
    palette = {tuple(c) for c in ((pipe.tokenizer.clusters + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8).tolist()}
    assert colours <= palette
    with pytest.raises(ConfigError, match="unconditional: it takes no classes"):
        pipe.generate([1, 2], seed=0)
    with pytest.raises(ConfigError, match="num_images"):
        pipe.generate(seed=0)
    with pytest.raises(ConfigError, match="nothing to guide"):
        pipe.generate(num_images=1, cfg_scale=2.0)


def test_convert_and_generate_cli(tmp_path, capsys):
    release, out = tmp_path / "release", tmp_path / "converted"
    write_release(release, CONFIGS["small"])
    assert main(["convert", "igpt", "--model-dir", str(release), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["generate", "-m", str(out), "-n", "3", "--out", str(tmp_path / "g.png"), "-q",
                 "--sampler", "sjd"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 3 and report["classes"] is None
    assert main(["generate", "-m", str(out), "-c", "1", "--out", str(tmp_path / "g.png"), "-q"]) == 2
    assert "unconditional" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"clusters": [[0.0, 0.0, 0.0, 0.0]] * 16}))
    assert main(["convert", "igpt", "--model-dir", str(release), "--palette", str(tmp_path / "bad.json"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "(K, 3)" in capsys.readouterr().err


def test_class_conditional_pixel_model_needs_classes_and_checks_them():
    gen, tok = tiny_igpt(num_classes=3)
    pipe = ARPipeline(gen, tok, defaults={"cfg_scale": 2.0})
    assert pipe.conditional and pipe.image_size == 8
    assert len(pipe.generate([0, 2], seed=0)) == 2
    with pytest.raises(ConfigError, match="class-conditional: give classes"):
        pipe.generate(seed=0)
    with pytest.raises(ConfigError, match="num_images is for unconditional models"):
        pipe.generate(num_images=2)
    with pytest.raises(ConfigError, match=r"out of range"):
        pipe.generate([3])


def test_an_image_size_the_model_was_not_built_for_is_an_error():
    gen, tok = tiny_igpt()
    with pytest.raises(ConfigError, match=r"does not match the generator's token grid"):
        ARPipeline(gen, tok, image_size=16)
    with pytest.raises(ConfigError, match=r"built for 8x8 images"):
        gen(tok.encode(torch.zeros(1, 3, 16, 16)).flatten(1), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"palette has 5 colours, the model predicts 8"):
        gen.bind_tokenizer(PaletteTokenizer.from_colours(torch.zeros(5, 3)))


def test_palette_files_of_the_wrong_shape_are_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"clusters": [[0.0, 0.1], [0.2, 0.3]]}))
    with pytest.raises(ConfigError, match=r"\(K, 3\).*shape \(2, 2\)"):
        read_palette(bad)
    npy = tmp_path / "p.npy"
    np.save(npy, np.full((4, 3), 3.0))
    with pytest.raises(ConfigError, match=r"in \[-1, 1\]"):
        read_palette(npy)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable palette"):
        read_palette(tmp_path / "junk.json")
    with pytest.raises(ConfigError, match="no 'clusters'"):
        (tmp_path / "other.json").write_text(json.dumps({"size": 32}))
        read_palette(tmp_path / "other.json")


def test_kmeans_recovers_the_colours_of_a_palette_image_set():
    colours = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 0.0, 0.0], [0.0, 1.0, -0.5], [0.5, 0.5, 1.0]])
    g = torch.Generator().manual_seed(0)
    pixels = colours[torch.randint(0, 4, (4000,), generator=g)] + 0.01 * torch.randn(4000, 3, generator=g)
    fitted = kmeans(pixels.clamp(-1, 1), 4, seed=3)
    assert torch.equal(fitted, kmeans(pixels.clamp(-1, 1), 4, seed=3))  # seeded
    dist = torch.cdist(colours, fitted).min(1).values
    assert dist.max() < 0.02, dist


def test_train_a_palette_and_a_pixel_model_on_an_image_folder(tmp_path, capsys):
    from PIL import Image

    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(4):
            im = np.zeros((8, 8, 3), np.uint8)
            im[: 4 + i % 3] = colour
            Image.fromarray(im).save(tmp_path / "data" / f"class{c}" / f"{i}.png")
    pal, gen_out = tmp_path / "palette", tmp_path / "pixel"
    assert main(["train", "tokenizer", "--kind", "palette", "--data", str(tmp_path / "data"), "--resolution", "8",
                 "--codebook-size", "3", "--out", str(pal), "-q"]) == 0
    tok = argen.tokenizers.load_tokenizer(pal)
    assert tok.kind == "pixels" and tok.codebook_size == 3
    expected = torch.tensor([[-1.0, -1, -1], [1, -1, -1], [-1, -1, 1]])  # black, red, blue
    assert torch.cdist(tok.clusters, expected).min(1).values.max() < 1e-3
    assert main(["train", "tokenizer", "--kind", "palette", "--ch", "8", "--data", "shapes", "--out",
                 str(tmp_path / "x"), "-q"]) == 2
    capsys.readouterr()
    assert main(["train", "generator", "--kind", "llamagen", "--tokenizer", str(pal), "--out", str(tmp_path / "x"),
                 "-q"]) == 2
    assert "needs a VQ tokenizer" in capsys.readouterr().err
    assert main(["train", "generator", "--kind", "pixel", "--tokenizer", str(pal), "--data", str(tmp_path / "data"),
                 "--resolution", "8", "--steps", "3", "--batch-size", "4", "--dropout", "0", "--sample-every", "3",
                 "--checkpoint-every", "3", "--out", str(gen_out), "-q"]) == 0
    pipe = argen.load(str(gen_out))
    assert isinstance(pipe.generator, ImageGPT) and pipe.generator.num_classes == 2 and pipe.image_size == 8
    assert len(pipe.generate(["class1"], seed=0)) == 1


def test_an_unconditional_model_samples_to_npz_for_fid(tmp_path):
    from argen.eval.sampling import SAMPLES_NAME, sample_to_npz

    gen, tok = tiny_igpt(num_classes=0)
    pipe = ARPipeline(gen, tok, defaults={"top_k": 4})
    path = sample_to_npz(pipe, tmp_path, labels=np.zeros(3, np.int64), seed=1, batch_size=2, progress=False)
    with np.load(tmp_path / SAMPLES_NAME) as f:
        assert path == tmp_path / SAMPLES_NAME and f["arr_0"].shape == (3, 8, 8, 3) and not f["arr_1"].any()


def test_bench_runs_an_unconditional_model_and_refuses_classes_for_it():
    from argen.bench import run_bench

    gen, tok = tiny_igpt(num_classes=0)
    pipe = ARPipeline(gen, tok, defaults={"top_k": 4}, name="pixels")
    report = run_bench(pipe, ["sjd:window=8"], batch_sizes=[2], repeats=1, warmup=False)
    rows = {r["sampler"]: r for r in report["results"]}
    assert rows["ar"]["forward_passes"] == 64 and rows["sjd:window=8"]["forward_passes"] <= 64
    with pytest.raises(ConfigError, match="unconditional: benchmark it without classes"):
        run_bench(pipe, ["sjd"], batch_sizes=[1], classes=[1], repeats=1, warmup=False)
