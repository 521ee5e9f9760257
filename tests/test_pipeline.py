"""The Python API: ARPipeline.generate, save/load round trip, argen.load for names and folders."""
import json

import pytest
import torch
from conftest import GPT_TINY_ARGS, VQ_TINY_ARGS
from PIL import Image

import argen
from argen import zoo
from argen.errors import CheckpointError, ConfigError, DownloadError, UnknownModelError


def test_generate_returns_images_and_stats(tiny_pipe):
    images = tiny_pipe.generate([1, 2, 3], seed=0)
    assert len(images) == 3 and all(isinstance(im, Image.Image) for im in images)
    assert images[0].size == (16, 16) and images[0].mode == "RGB"
    st = tiny_pipe.last_stats
    assert st.seed == 0 and st.batch_size == 3 and st.forward_passes == 16


def test_big_requests_stream_in_batches_and_images_do_not_depend_on_the_batch_size(tiny_pipe):
    ids = [1, 2, 3, 4, 5, 6, 7]
    whole = tiny_pipe.generate(ids, seed=3, batch_size=7, output_type="codes")
    for bs in (1, 3):
        assert torch.equal(tiny_pipe.generate(ids, seed=3, batch_size=bs, output_type="codes"), whole)
    assert tiny_pipe.last_stats.batches == 3 and tiny_pipe.last_stats.batch_size == 7
    # a request split over calls (or processes) with first_index draws what one call draws
    tail = tiny_pipe.generate(ids[4:], seed=3, first_index=4, output_type="codes")
    assert torch.equal(tail, whole[4:]) and not torch.equal(tail, whole[:3])
    # batch by batch: decoded as they finish, positions in the request, one merged stats
    batches = list(tiny_pipe.generate_batches(ids, seed=3, batch_size=3, output_type="pt"))
    assert [(b.start, b.classes, b.images.shape[0]) for b in batches] == [(0, [1, 2, 3], 3), (3, [4, 5, 6], 3),
                                                                          (6, [7], 1)]
    torch.testing.assert_close(torch.cat([b.images for b in batches]), tiny_pipe.decode(whole))
    assert tiny_pipe.last_stats.batches == 3 and tiny_pipe.last_stats.seed == 3


def test_batch_size_default_and_bad_values(tiny_pipe):
    from argen.pipeline import default_batch_size

    assert default_batch_size("cpu") == 16 and default_batch_size("cuda") == 64
    tiny_pipe.generate(list(range(10)) * 2, seed=0, output_type="codes")
    assert tiny_pipe.last_stats.batches == 2  # 20 images at the CPU's default of 16
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
            tiny_pipe.generate([1], batch_size=bad)
    with pytest.raises(ConfigError, match="first_index must be an integer >= 0"):
        tiny_pipe.generate([1], first_index=-1)


def test_batch_samplers_are_reproducible_per_batch_size(tiny_pipe):
    """SJD draws a batch from one stream (seeded from the seed and the batch's first index)."""
    a = tiny_pipe.generate([1, 2, 3], seed=2, sampler="sjd", batch_size=2, output_type="codes")
    assert torch.equal(a, tiny_pipe.generate([1, 2, 3], seed=2, sampler="sjd", batch_size=2, output_type="codes"))
    from argen import samplers

    with pytest.raises(ConfigError, match="draws a 'token' model's batch from one random stream"):
        samplers.sample(tiny_pipe.generator, [1, 2], sampler="sjd",
                        generator=samplers.RowStreams.from_seed(0, 0, 2, "cpu"))
    with pytest.raises(ConfigError, match="3 random streams for a batch of 2 rows"):
        samplers.sample(tiny_pipe.generator, [1, 2], generator=samplers.RowStreams.from_seed(0, 0, 3, "cpu"))


def test_a_batch_too_big_for_memory_is_a_clear_error(tiny_pipe, monkeypatch):
    from argen import samplers

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 85899345920 bytes.\nmore lines")

    monkeypatch.setattr(samplers, "sample", no_memory)
    with pytest.raises(ConfigError, match=r"^a batch of 2 images does not fit in cpu memory \(\[enforce fail.*"
                                          r"85899345920 bytes.\); use a smaller batch_size \(CLI: --batch-size\)$"):
        tiny_pipe.generate([1, 2])


def test_generation_equals_sampler_plus_decode(tiny_pipe, gpt_io):
    codes = tiny_pipe.generate(gpt_io["labels"].tolist(), greedy=True, output_type="codes")
    assert torch.equal(codes, gpt_io["gen_greedy_cfg4"].long())  # pipeline defaults: cfg 4
    images = tiny_pipe.generate(gpt_io["labels"].tolist(), greedy=True, output_type="pt")
    with torch.no_grad():
        ref = tiny_pipe.tokenizer.decode(codes.view(2, 4, 4)).clamp(-1, 1)
    torch.testing.assert_close(images, ref)


def test_save_load_round_trip(tiny_pipe, tmp_path):
    tiny_pipe.class_names = [f"c{i}" for i in range(10)]
    tiny_pipe.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "generator" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "m" / "generator" / "config.json").read_text())["_class"] == "llamagen"
    loaded = argen.load(tmp_path / "m")
    assert loaded.defaults == tiny_pipe.defaults and loaded.image_size == 16
    assert loaded.generator.config == tiny_pipe.generator.config
    for (k, v), (k2, v2) in zip(tiny_pipe.generator.state_dict().items(), loaded.generator.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    a = tiny_pipe.generate(["c1", 2], seed=11, output_type="pt")
    b = loaded.generate(["c1", "2"], seed=11, output_type="pt")
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="unknown class name 'dog'.*c0"):
        loaded.generate(["dog"])


def test_float16_storage_keeps_infinite_masks_and_refuses_overflow(tmp_path):
    from argen.generators import VAR, VARConfig

    var = VAR(VARConfig(depth=2, embed_dim=32, num_heads=2, num_classes=4, vocab_size=16, patch_nums=[1, 2]))
    assert torch.isinf(var.attn_bias_for_masking).any()  # the block-causal mask the official checkpoints store
    var.save_pretrained(tmp_path / "var", storage_dtype=torch.float16)
    back = VAR.from_pretrained(tmp_path / "var")
    assert torch.equal(back.attn_bias_for_masking, var.attn_bias_for_masking)
    with torch.no_grad():
        var.head.weight[0, 0] = 1e6  # finite, beyond float16
    with pytest.raises(ConfigError, match=r"head.weight does not fit in torch.float16"):
        var.save_pretrained(tmp_path / "big", storage_dtype=torch.float16)


def test_load_errors(tmp_path):
    with pytest.raises(UnknownModelError, match="unknown model 'llamagen-gpt-z'.*llamagen-gpt-b"):
        argen.load("llamagen-gpt-z")
    with pytest.raises(CheckpointError, match="not an argen pretrained folder"):
        argen.load(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        argen.load(tmp_path)


def test_zoo_lists_the_released_models():
    names = [e.name for e in argen.list_models()]
    bundled = list(zoo.BUNDLED)
    assert (bundled[0] == "shapes-llamagen"
            and names[: len(bundled) + 2] == [*bundled, "llamagen-gpt-b", "llamagen-gpt-b-384"])
    assert {"llamagen-gpt-l", "llamagen-gpt-xl-384", "llamagen-gpt-xxl-384", "llamagen-gpt-3b-384"} <= set(names)
    e = zoo.OFFICIAL["llamagen-gpt-xl-384"]
    assert e.files == {"generator": "c2i_XL_384.pt", "tokenizer": "vq_ds16_c2i.pt"}
    assert e.generator_args == {"preset": "GPT-XL", "block_size": 576} and e.repo_id == "FoundationVision/LlamaGen"


@pytest.fixture()
def tiny_entry(monkeypatch):
    """A zoo entry with the official file layout but the tiny fixture's sizes."""
    entry = zoo.ZooEntry(
        name="llamagen-tiny-test",
        family="llamagen",
        description="test",
        image_size=16,
        repo_id="FoundationVision/LlamaGen",
        files={"generator": "gpt.pt", "tokenizer": "vq.pt"},
        generator_args=GPT_TINY_ARGS,
        tokenizer_args=VQ_TINY_ARGS,
        defaults={"cfg_scale": 4.0},
    )
    monkeypatch.setitem(zoo.OFFICIAL, entry.name, entry)
    return entry


def test_zoo_name_converts_official_files_on_the_fly(tiny_entry, official_ckpts, gpt_io):
    pipe = argen.load(tiny_entry.name, checkpoint_dir=official_ckpts)
    codes = pipe.generate(gpt_io["labels"].tolist(), greedy=True, output_type="codes")
    assert torch.equal(codes, gpt_io["gen_greedy_cfg4"].long())


def test_zoo_name_offline_without_files_says_so(tiny_entry, tmp_path):
    with pytest.raises(DownloadError,
                       match="cannot get gpt.pt from the hub repository FoundationVision/LlamaGen.*offline"):
        argen.load(tiny_entry.name, local_files_only=True)
    with pytest.raises(DownloadError, match="not in"):
        argen.load(tiny_entry.name, checkpoint_dir=tmp_path, local_files_only=True)
