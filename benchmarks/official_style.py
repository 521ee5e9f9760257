"""Baseline for benchmarks: the official LlamaGen ``generate()`` decoding strategy, re-implemented.

This is an independent re-implementation (no official code copied) of how FoundationVision/LlamaGen
``autoregressive/models/generate.py`` + ``gpt.py`` decode a class-to-image sample, driving the
submodules of an existing argen :class:`~argen.generators.LlamaGen` so that the weights are shared and
the outputs are comparable token for token:

* one static KV cache per layer, (B2, n_head, max_seq_len, head_dim), allocated once, where B2 is
  2 * batch with CFG and max_seq_len = cls tokens + image tokens rounded up to a multiple of 8;
* each step writes k / v by index assignment at ``input_pos`` (``cache[:, :, input_pos] = k``);
* attention of every step runs over the FULL cache with the boolean row
  ``causal_mask[:B2, None, input_pos]`` of a lower-triangular (B2, L, L) mask;
* keys / values go through ``repeat_interleave(n_head // n_kv_head, dim=1)`` (a full copy, also when
  the factor is 1) before ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)``;
* logits of the last position through the output layer (float32), CFG
  ``uncond + (cond - uncond) * cfg_scale``, temperature division, top-k via ``torch.topk`` + masked
  fill, softmax, ``torch.multinomial``.

Norms, embeddings and RoPE are argen's own modules (identical to the official math); every linear
layer runs as the official ``nn.Linear`` does (``F.linear``), not through argen's decode-tuned ``Linear``.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from argen.nn import apply_rope


class OfficialStyleDecoder:
    """Per-generation state of the official loop (caches, mask, positions) for one argen LlamaGen."""

    def __init__(self, model, max_batch_size: int, max_seq_len: int | None = None) -> None:
        c = model.config
        self.model = model
        self.n_head = c.n_head
        self.n_kv_head = c.n_kv_head or c.n_head
        self.head_dim = c.head_dim
        # the official setup_caches rounds the cache length up to a multiple of 8
        self.max_seq_len = max_seq_len or -(-(c.cls_token_num + c.block_size) // 8) * 8
        w = model.tok_embeddings.weight
        shape = (max_batch_size, self.n_head, self.max_seq_len, self.head_dim)
        # the official cache is allocated with n_head heads (its KVCache ignores n_kv_head)
        self.k_caches = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in range(c.n_layer)]
        self.v_caches = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in range(c.n_layer)]
        tril = torch.tril(torch.ones(self.max_seq_len, self.max_seq_len, dtype=torch.bool, device=w.device))
        self.causal_mask = tril.unsqueeze(0).repeat(max_batch_size, 1, 1)
        self.freqs = model.rope  # (max_seq_len, head_dim/2, 2), zero rows for the class token

    # -- one transformer pass over positions ``input_pos`` ------------------------------------------
    def _attention(self, layer_idx: int, layer, x: torch.Tensor, freqs: torch.Tensor, input_pos, mask):
        att = layer.attention
        b, t, _ = x.shape
        hd, nh, nkv = self.head_dim, self.n_head, self.n_kv_head
        xq, xk, xv = F.linear(x, att.wqkv.weight).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        xq = apply_rope(xq.view(b, t, nh, hd), freqs)
        xk = apply_rope(xk.view(b, t, nkv, hd), freqs)
        xv = xv.view(b, t, nkv, hd)
        xq, xk, xv = (u.transpose(1, 2) for u in (xq, xk, xv))
        k_cache, v_cache = self.k_caches[layer_idx], self.v_caches[layer_idx]
        k_cache[:, :, input_pos] = xk
        v_cache[:, :, input_pos] = xv
        keys = k_cache.repeat_interleave(nh // nkv, dim=1)
        values = v_cache.repeat_interleave(nh // nkv, dim=1)
        out = F.scaled_dot_product_attention(xq, keys, values, attn_mask=mask, is_causal=False)
        out = out.transpose(1, 2).contiguous().view(b, t, -1)
        return F.linear(out, att.wo.weight)

    def forward(self, h: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """h (B2, T, dim) at positions ``input_pos`` (T,) -> float32 logits (B2, T, V)."""
        m = self.model
        b = h.shape[0]
        mask = self.causal_mask[:b, None, input_pos]
        freqs = self.freqs[input_pos].unsqueeze(0)  # (1, T, D/2, 2)
        for i, layer in enumerate(m.layers):
            h = h + self._attention(i, layer, layer.attention_norm(h), freqs, input_pos, mask)
            ff, y = layer.feed_forward, layer.ffn_norm(h)
            h = h + F.linear(F.silu(F.linear(y, ff.w1.weight)) * F.linear(y, ff.w3.weight), ff.w2.weight)
        h = m.norm(h)
        return F.linear(h, m.output.weight).float()


def official_sample(logits: torch.Tensor, temperature: float, top_k: int, generator, greedy: bool):
    """Official ``sample``: last-position logits / temperature, top-k masked fill, softmax, multinomial."""
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / max(temperature, 1e-5)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.inference_mode()
def official_generate(
    model,
    classes: torch.Tensor,
    max_new_tokens: int | None = None,
    *,
    cfg_scale: float = 4.0,
    temperature: float = 1.0,
    top_k: int = 2000,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    max_seq_len: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Class-to-image generation the official way; returns (codes (B, N), wall seconds)."""
    start = time.perf_counter()
    n = max_new_tokens or model.config.block_size
    classes = torch.as_tensor(classes, dtype=torch.long, device=model.tok_embeddings.weight.device)
    b = classes.shape[0]
    guided = cfg_scale > 1.0
    cond = torch.cat([classes, torch.full_like(classes, model.config.num_classes)]) if guided else classes
    b2 = cond.shape[0]
    dec = OfficialStyleDecoder(model, b2, max_seq_len)
    seq = torch.empty((b, n), dtype=torch.long, device=classes.device)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if guided:
            c, u = torch.split(logits, b, dim=0)
            logits = u + (c - u) * cfg_scale
        return official_sample(logits, temperature, top_k, generator, greedy)

    # prefill: the class token at position 0
    pos = torch.arange(0, 1, device=classes.device)
    h = model.cls_embedding(cond).to(model.tok_embeddings.weight.dtype)
    logits = dec.forward(h, pos)[:, -1]
    tok = pick(logits)
    seq[:, 0] = tok[:, 0]
    input_pos = torch.tensor([1], device=classes.device, dtype=torch.int)
    for i in range(1, n):
        x = tok.view(-1, 1)
        x = torch.cat([x, x]) if guided else x
        logits = dec.forward(model.tok_embeddings(x), input_pos)[:, -1]
        tok = pick(logits)
        seq[:, i] = tok[:, 0]
        input_pos += 1
    return seq, time.perf_counter() - start
