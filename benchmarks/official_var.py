"""Baseline for benchmarks: the official VAR ``autoregressive_infer_cfg`` strategy, re-implemented.

An independent re-implementation (no official code copied) of how FoundationVision/VAR
``models/var.py`` + ``basic_var.py`` sample a class-to-image batch, driving the submodules of an
existing argen :class:`~argen.generators.VAR` (and its bound VQ-VAE) so that the weights are shared and
the outputs comparable id for id:

* batch [cond ; uncond] for every scale (also at cfg 0 and at the first scale, where t = 0);
* per block and scale the AdaLN projection of the class embedding is recomputed;
* every linear layer through ``F.linear`` (the official ``nn.Linear``; argen's ``Linear`` modules are
  only used for their weights here); q/k/v with the concatenated (q, zero, v) bias; L2-normalised q, k;
* the KV cache grows by ``torch.cat`` along the sequence for every scale and layer;
* attention is the explicit ``softmax(q @ k^T) @ v`` (the official ``slow_attn``; the fused kernels
  are only taken on GPUs with flash-attn / xformers);
* CFG ``(1 + t) cond - t uncond`` with t = cfg * si / (K - 1); top-k by ``topk`` + masked fill, top-p
  by an ascending sort, softmax, ``torch.multinomial`` with the seeded generator;
* the next scale's input from the VQ-VAE (bicubic up, phi, area down), and the final image by the
  VQ-VAE decoder with its official nearest-x2-then-conv upsampling, clamped and mapped to [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from argen.samplers.logits import top_k_filter, top_p_filter
from argen.tokenizers.blocks import Upsample


def _block(blk, x: torch.Tensor, cond: torch.Tensor, shared: torch.Tensor | None, cache: list) -> torch.Tensor:
    C = blk.C
    if shared is not None:
        g1, g2, s1, s2, b1, b2 = (blk.ada_gss + shared).unbind(2)
    else:
        g1, g2, s1, s2, b1, b2 = _lin(blk.ada_lin[1], F.silu(cond)).view(-1, 1, 6, C).unbind(2)
    att = blk.attn
    h = blk.ln_wo_grad(x).mul(s1.add(1)).add_(b1)
    b, n, _ = h.shape
    bias = torch.cat([att.q_bias, att.zero_k_bias, att.v_bias])
    q, k, v = (F.linear(h, att.mat_qkv.weight, bias).view(b, n, 3, att.num_heads, att.head_dim)
               .permute(2, 0, 3, 1, 4).unbind(0))
    if att.l2_norm:
        q = F.normalize(q, dim=-1).mul(att.scale_mul_1H11.clamp_max(att.max_scale_mul).exp())
        k = F.normalize(k, dim=-1)
    if cache:
        k = torch.cat([cache[0], k], dim=2)
        v = torch.cat([cache[1], v], dim=2)
    cache[:] = [k, v]
    a = (q.mul(att.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    x = x + _lin(att.proj, a.transpose(1, 2).reshape(b, n, C)).mul_(g1)
    h = blk.ln_wo_grad(x).mul(s2.add(1)).add_(b2)
    return x + _lin(blk.ffn.fc2, F.gelu(_lin(blk.ffn.fc1, h), approximate="tanh")).mul(g2)


def _lin(layer, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


@torch.no_grad()
def official_var_generate(model, labels: torch.Tensor, cfg: float, top_k: int, top_p: float,
                          rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, L), images (B, 3, H, W) in [0, 1]) the way the official loop computes them."""
    vae = model.tokenizer
    quant = vae.quantize
    pns = model.patch_nums
    b = labels.shape[0]
    n_scales = len(pns)
    emb = model.class_emb(torch.cat([labels, torch.full_like(labels, model.num_classes)]))
    lvl_pos = model.lvl_embed(model.lvl_1L) + model.pos_1LC
    first = model.first_l
    x = emb.unsqueeze(1).expand(2 * b, first, -1) + model.pos_start.expand(2 * b, first, -1) + lvl_pos[:, :first]
    caches = [[] for _ in model.blocks]
    cur, f_hat, ids_all = 0, None, []
    for si, pn in enumerate(pns):
        cur += pn * pn
        shared = (_lin(model.shared_ada_lin[1], F.silu(emb)).view(-1, 1, 6, model.config.embed_dim)
                  if model.config.shared_aln else None)
        h = x
        for blk, cache in zip(model.blocks, caches):
            h = _block(blk, h, emb, shared, cache)
        nm = model.head_nm
        scale, shift = _lin(nm.ada_lin[1], F.silu(emb)).view(-1, 1, 2, nm.C).unbind(2)
        logits = _lin(model.head, nm.ln_wo_grad(h.float()).mul(scale.add(1)).add_(shift)).float()
        t = cfg * si / (n_scales - 1)
        logits = (1 + t) * logits[:b] - t * logits[b:]
        logits = top_p_filter(top_k_filter(logits, top_k), top_p, "var")
        ids = torch.multinomial(logits.softmax(dim=-1).view(-1, logits.shape[-1]), 1, generator=rng).view(b, -1)
        ids_all.append(ids)
        f_hat, nxt = quant.next_input(si, f_hat, ids)
        if si + 1 < n_scales:
            x = (_lin(model.word_embed, nxt) + lvl_pos[:, cur : cur + pns[si + 1] ** 2]).repeat(2, 1, 1)
    ups = [m for m in vae.decoder.modules() if isinstance(m, Upsample)]
    for m in ups:
        m.subpixel = False
    try:
        images = vae.decoder(vae.post_quant_conv(f_hat)).clamp(-1, 1).add(1).mul(0.5)
    finally:
        for m in ups:
            m.subpixel = True
    return torch.cat(ids_all, dim=1), images
