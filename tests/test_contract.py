"""The contract every generator family keeps, in the diffusers style: one suite run over the family registry
with a tiny pipeline per family (tests/conftest.py's TINY_PIPELINES; a family registered without one fails
here). Save/load round trip, seeded reproducibility, batch splitting where the sampler promises per-image
streams, a bad class id, float16 storage and strict loading."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_family_pipe
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import argen
from argen import samplers
from argen.components import load_component
from argen.errors import CheckpointError, ConfigError
from argen.families import families
from argen.generators.protocol import missing_members, protocol_for
from argen.modeling import WEIGHTS_NAME
from argen.tokenizers.protocol import tokenizer_protocol

IDS = [1, 2, 3]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=[f.name for f in families()])
def tiny(request):
    """(pipeline, its sampling options) of one registered family."""
    return tiny_family_pipe(request.param)


def _codes(pipe, ids=IDS, **kwargs):
    return pipe.generate(ids, output_type="codes", **kwargs)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k, v in sa.items():
        assert v.dtype == sb[k].dtype and torch.equal(v, sb[k]), k


def test_save_load_round_trip(tiny, tmp_path):
    pipe, _ = tiny
    loaded = argen.load(pipe.save_pretrained(tmp_path / "m"))
    assert type(loaded.generator) is type(pipe.generator) and loaded.family is pipe.family
    assert loaded.generator.config == pipe.generator.config and loaded.tokenizer.config == pipe.tokenizer.config
    assert loaded.defaults == pipe.defaults and loaded.image_size == pipe.image_size and loaded.name == pipe.name
    _assert_same_weights(pipe.generator, loaded.generator)
    _assert_same_weights(pipe.tokenizer, loaded.tokenizer)
    # bit for bit, continuous tokens too (the loader copies tensors that a safetensors file left unaligned:
    # as parameters they changed the CPU kernels' rounding, ~1e-5 in FlowAR's latents)
    images = pipe.generate(IDS, seed=11, output_type="pt")
    codes = pipe.last_codes
    assert torch.equal(loaded.generate(IDS, seed=11, output_type="pt"), images)
    assert torch.equal(loaded.last_codes, codes)


def test_same_seed_same_codes_other_seed_other_codes(tiny):
    pipe, _ = tiny
    images = pipe.generate(IDS, seed=3, output_type="pt")
    a = pipe.last_codes
    assert images.shape[:2] == (len(IDS), 3) and images.min() >= -1 and images.max() <= 1
    assert a.shape[0] == len(IDS) and torch.equal(a, _codes(pipe, seed=3))
    assert not torch.equal(a, _codes(pipe, seed=4))


def test_batch_splitting_keeps_the_codes_where_the_sampler_promises_it(tiny):
    pipe, _ = tiny
    names = samplers.samplers_for(pipe.generator)
    assert names and samplers.default_sampler(pipe.generator) == names[0]
    for name in names:  # every sampler that drives the family
        spec = samplers.SAMPLERS[name]
        # a sampler that needs a second model (cspd's draft) gets the pipeline itself
        extra = {spec.model_options[0]: pipe} if spec.needs_model else {}
        if samplers.takes_row_streams(name, pipe.generator):  # per-image streams: the batch size does not matter
            whole = _codes(pipe, seed=5, sampler=name, batch_size=len(IDS), **extra)
            for k in (1, 2):
                part = _codes(pipe, seed=5, sampler=name, batch_size=k, **extra)
                if whole.is_floating_point():  # the same draws; a matmul's round-off may depend on the batch size
                    torch.testing.assert_close(part, whole, atol=1e-5, rtol=1e-5, msg=f"{name}, batches of {k}")
                else:
                    assert torch.equal(part, whole), (name, k)
        else:  # one stream per batch: the same seed and batch size reproduce
            a = _codes(pipe, seed=5, sampler=name, batch_size=2, **extra)
            assert torch.equal(a, _codes(pipe, seed=5, sampler=name, batch_size=2, **extra)), name
        assert pipe.last_stats.batches == 2, name  # the last call: 3 images in batches of 2


def test_bad_class_id_is_a_config_error(tiny):
    pipe, _ = tiny
    for bad in (10**6, -1):
        with pytest.raises(ConfigError, match=rf"class id\(s\) \[{bad}\] out of range"):
            pipe.generate([0, bad], seed=0)


def test_generator_stored_in_float16_loads_as_float32(tiny, tmp_path):
    pipe, _ = tiny
    folder = pipe.save_pretrained(tmp_path / "half", generator_dtype=torch.float16)
    with safe_open(str(folder / "generator" / WEIGHTS_NAME), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} & {torch.float16}
    loaded = argen.load(folder)
    original, back = pipe.generator.state_dict(), loaded.generator.state_dict()
    assert list(original) == list(back)
    for k, v in original.items():
        if v.is_floating_point():
            assert back[k].dtype == torch.float32 and torch.equal(back[k], v.half().float()), k
        else:
            assert torch.equal(back[k], v), k
    assert loaded.generate([1], seed=0, output_type="codes").isfinite().all()


def test_strict_loading_names_missing_and_unexpected_keys(tiny, tmp_path):
    pipe, _ = tiny
    folder = tmp_path / "gen"
    pipe.generator.save_pretrained(folder)
    assert torch.equal(next(iter(load_component(folder).state_dict().values())),
                       next(iter(pipe.generator.state_dict().values())))
    state = load_file(str(folder / WEIGHTS_NAME))
    dropped = sorted(state)[-1]
    state["not_a_weight.bias"] = state.pop(dropped)
    save_file(state, str(folder / WEIGHTS_NAME))
    with pytest.raises(CheckpointError) as err:
        load_component(folder)
    msg = str(err.value)
    assert "missing keys (1)" in msg and dropped in msg, msg
    assert "unexpected keys (1)" in msg and "not_a_weight.bias" in msg, msg


def test_generator_and_tokenizer_implement_their_kinds_protocols(tiny):
    """What the samplers may call (argen.generators.protocol) and what the pipeline may call on the
    tokenizer (argen.tokenizers.protocol) exist on the family's instances, not just on its class."""
    pipe, _ = tiny
    assert missing_members(pipe.generator, protocol_for(pipe.family.kind)) == []
    assert missing_members(pipe.tokenizer, tokenizer_protocol(pipe.family.tokenizer_kind)) == []
    assert pipe.tokenizer.kind == pipe.family.tokenizer_kind
