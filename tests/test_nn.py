"""argen.nn: attention backends agree, the KV cache behaves, RoPE/RMSNorm/SwiGLU follow LlamaGen."""
import logging

import pytest
import torch

from argen.errors import ConfigError
from argen.generators.llamagen import PRESETS
from argen.nn import (
    KVCache,
    RMSNorm,
    apply_rope,
    attention,
    attention_backend,
    causal_mask,
    llama_ffn_hidden,
    resolve_backend,
    rope_2d_table,
)


def _qkv(b=2, h=4, tq=5, tk=5, d=8, hkv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=g)
    k = torch.randn(b, hkv or h, tk, d, generator=g)
    v = torch.randn(b, hkv or h, tk, d, generator=g)
    return q, k, v


def _manual(q, k, v, allowed):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    s = s.masked_fill(~allowed, float("-inf"))
    return s.softmax(-1) @ v


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("tq, tk", [(5, 5), (3, 7), (1, 6)])
def test_causal_attention_is_lower_right_aligned(backend, tq, tk):
    q, k, v = _qkv(tq=tq, tk=tk)
    out = attention(q, k, v, causal=True, backend=backend)
    ref = _manual(q, k, v, causal_mask(tq, tk))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_masks_and_gqa(backend):
    q, k, v = _qkv(tq=4, tk=6, hkv=2)
    allowed = torch.rand(2, 1, 4, 6, generator=torch.Generator().manual_seed(1)) > 0.3
    allowed[..., 0] = True
    ref = _manual(q, k, v, allowed)
    torch.testing.assert_close(attention(q, k, v, mask=allowed, backend=backend), ref, atol=1e-5, rtol=1e-5)
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(attention(q, k, v, mask=additive, backend=backend), ref, atol=1e-5, rtol=1e-5)
    # mask and causal combine
    both = allowed & causal_mask(4, 6)
    torch.testing.assert_close(
        attention(q, k, v, mask=allowed, causal=True, backend=backend), _manual(q, k, v, both), atol=1e-5, rtol=1e-5
    )


def test_xformers_falls_back_on_cpu_with_a_logged_reason(caplog):
    q, k, v = _qkv()
    with caplog.at_level(logging.WARNING, logger="argen.nn.attention"):
        assert resolve_backend("xformers", q.device) == "sdpa"
        out = attention(q, k, v, causal=True, backend="xformers")
    assert "xformers" in caplog.text
    torch.testing.assert_close(out, attention(q, k, v, causal=True, backend="math"), atol=1e-5, rtol=1e-5)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown attention backend 'flash'.*sdpa"):
        with attention_backend("flash"):
            pass


def _cache(b=3, max_len=10):
    return KVCache(2, b, 2, max_len, 4)


def test_kv_cache_uniform_window_write_and_mask():
    cache = _cache()
    w = cache.prepare(3)
    assert w.start == 0 and w.key_len == 3 and w.mask is None and w.causal
    k = torch.randn(3, 2, 3, 4)
    keys, vals = cache.update(0, k, k + 1, w)
    cache.advance(w)
    torch.testing.assert_close(keys, k)
    assert cache.lengths.tolist() == [3, 3, 3]
    w = cache.prepare(1)
    assert w.start == 3 and w.key_len == 4 and not w.causal and w.positions.tolist() == [[3]] * 3


def test_kv_cache_ragged_writes_match_per_row_writes():
    cache = _cache()
    w = cache.prepare(4)
    cache.update(0, torch.zeros(3, 2, 4, 4), torch.zeros(3, 2, 4, 4), w)
    cache.advance(w)
    cache.truncate(torch.tensor([1, 4, 2]))
    w = cache.prepare(2)
    assert w.start is None and w.positions.tolist() == [[1, 2], [4, 5], [2, 3]] and w.key_len == 6
    # row b, query j sees keys 0..positions[b, j]
    expect = torch.arange(6)[None, None, :] <= w.positions[:, :, None]
    assert torch.equal(w.mask[:, 0], expect)
    new = torch.arange(3 * 2 * 2 * 4, dtype=torch.float32).view(3, 2, 2, 4)
    keys, _ = cache.update(0, new, new, w)
    for b, start in enumerate([1, 4, 2]):
        torch.testing.assert_close(keys[b, :, start : start + 2], new[b])
    cache.advance(w)
    assert cache.lengths.tolist() == [3, 6, 4]


def test_kv_cache_truncate_back_to_uniform_and_errors():
    cache = _cache(max_len=5)
    w = cache.prepare(4)
    cache.advance(w)
    cache.truncate(torch.tensor([2, 3, 2]))
    assert cache.prepare(1).start is None
    cache.truncate(2)
    assert cache.prepare(1).start == 2
    with pytest.raises(ConfigError, match="truncate"):
        cache.truncate(3)  # cannot grow by truncation
    with pytest.raises(ConfigError, match="overflow"):
        cache.prepare(4)
    cache.select(torch.tensor([0, 2]))
    assert cache.batch_size == 2 and cache.lengths.tolist() == [2, 2]


def test_rope_2d_table_layout():
    hd = 8  # 4 rotation pairs: 2 row frequencies, then 2 column frequencies
    table = rope_2d_table(3, hd, base=10000, n_prefix=2)
    assert table.shape == (2 + 9, 4, 2)
    assert torch.count_nonzero(table[:2]) == 0  # condition rows are zeros, not identity
    f = torch.tensor([1.0, 10000 ** (-2 / 4)])
    n = 2 + 1 * 3 + 2  # row 1, column 2
    angles = torch.cat([1 * f, 2 * f])
    torch.testing.assert_close(table[n, :, 0], angles.cos())
    torch.testing.assert_close(table[n, :, 1], angles.sin())


def test_apply_rope_rotates_interleaved_pairs_and_zeroes_condition():
    table = rope_2d_table(2, 8, n_prefix=1)
    x = torch.randn(1, 5, 2, 8)
    out = apply_rope(x, table.unsqueeze(0))
    assert torch.count_nonzero(out[:, 0]) == 0  # class token q/k become zero vectors
    c, s = table[3, 1]  # position 3, pair 1 = channels (2, 3)
    torch.testing.assert_close(out[0, 3, :, 2], x[0, 3, :, 2] * c - x[0, 3, :, 3] * s)
    torch.testing.assert_close(out[0, 3, :, 3], x[0, 3, :, 3] * c + x[0, 3, :, 2] * s)
    torch.testing.assert_close(out.norm(dim=-1)[:, 1:], x.norm(dim=-1)[:, 1:])


def test_rmsnorm_cast_order_in_bf16():
    norm = RMSNorm(16).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2, 16))
    x = torch.randn(4, 16).to(torch.bfloat16)
    xf = x.float()
    expect = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16) * norm.weight
    assert torch.equal(norm(x), expect)


def test_swiglu_hidden_widths_of_released_models():
    hidden = {name: llama_ffn_hidden(p["dim"]) for name, p in PRESETS.items()}
    assert hidden == {"GPT-B": 2048, "GPT-L": 2816, "GPT-XL": 3584, "GPT-XXL": 4096, "GPT-3B": 8704}


@pytest.mark.parametrize("shape,bias", [((2, 3, 5, 7), True), ((1, 16, 8, 8), False)])
def test_upsample_conv_equals_nearest_then_conv(shape, bias):
    from argen.tokenizers.blocks import Upsample, upsample_conv

    torch.manual_seed(0)
    x = torch.randn(shape)
    w, b = torch.randn(shape[1], shape[1], 3, 3), torch.randn(shape[1]) if bias else None
    ref = torch.nn.functional.conv2d(torch.nn.functional.interpolate(x, scale_factor=2.0), w, b, padding=1)
    torch.testing.assert_close(upsample_conv(x, w, b), ref, rtol=1e-5, atol=1e-4)
    up = Upsample(shape[1])
    with torch.no_grad():
        fast = up(x)
        up.subpixel = False
        official = up(x)
    torch.testing.assert_close(fast, official, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(up(x).detach(), official)  # with grad: nearest + conv, as trained


@pytest.mark.parametrize("rows", [1, 2, 64, 65, 256, 257])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_fast_path_equals_f_linear(rows, bias):
    from argen.nn.linear import Linear, linear

    torch.manual_seed(rows)
    x, w = torch.randn(rows, 1, 48), torch.randn(80, 48)
    b = torch.randn(80) if bias else None
    y = linear(x, w, b)
    assert y.shape == (rows, 1, 80)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-5)
    layer = Linear(48, 80, bias=bias)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
