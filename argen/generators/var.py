"""VAR (next-scale prediction, arXiv 2404.02905): a GPT-2-style transformer with AdaLN class
conditioning that predicts each token map of a multi-scale VQ-VAE from all coarser ones.

Key names and numerics follow the official ``models/var.py`` / ``basic_var.py`` (released d16, d20,
d24, d30 at 256px; d36 at 512px with a shared AdaLN), so official checkpoints load strictly.

    var = VAR(VARConfig.preset("d16")).bind_tokenizer(vae)
    logits = var(codes, classes)        # teacher forcing: (B, L, V); scale k's rows predict scale k
    # inference, one scale per step (what argen.samplers' scale sampler does):
    cache = var.new_cache(B); cond = var.condition(classes)
    x = var.first_scale_input(cond)                # (B, 1, C)
    logits = var.step(x, cond, cache)              # (B, pn0^2, V) -> sample ids -> f_hat, next input
    x = var.scale_input(next_features, si + 1)     # (B, pn^2, C) ...
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from argen.errors import ConfigError
from argen.generators.condition import check_class_ids
from argen.modeling import Pretrained, build_config, register
from argen.nn import CacheWindow, KVCache, Linear, attention, drop_path, linear
from argen.tokenizers.msvq import PATCH_NUMS_256, PATCH_NUMS_512

PRESETS: dict[str, dict[str, Any]] = {
    "d16": dict(depth=16),
    "d20": dict(depth=20),
    "d24": dict(depth=24),
    "d30": dict(depth=30),
    "d36": dict(depth=36, shared_aln=True, patch_nums=PATCH_NUMS_512),
}


@dataclass
class VARConfig:
    """The official ``VAR`` constructor arguments (``Cvae`` comes from the VQ-VAE). ``embed_dim``,
    ``num_heads`` and ``drop_path_rate`` default as ``build_vae_var`` sets them: 64 * depth, depth,
    0.1 * depth / 24."""

    vocab_size: int = 4096
    num_classes: int = 1000
    depth: int = 16
    embed_dim: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float | None = None
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1
    attn_l2_norm: bool = True
    patch_nums: list[int] = field(default_factory=lambda: list(PATCH_NUMS_256))
    Cvae: int = 32

    def __post_init__(self) -> None:
        self.patch_nums = [int(p) for p in self.patch_nums]
        if self.embed_dim is None:
            self.embed_dim = 64 * self.depth
        if self.num_heads is None:
            self.num_heads = self.depth
        if self.drop_path_rate is None:
            self.drop_path_rate = 0.1 * self.depth / 24
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} must be a multiple of num_heads {self.num_heads}")
        if not self.patch_nums or any(b <= a for a, b in zip(self.patch_nums, self.patch_nums[1:])):
            raise ConfigError(f"patch_nums must be a strictly growing list of sizes, got {self.patch_nums}")

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "VARConfig":
        return build_config(cls, PRESETS, name, overrides, "VAR")

    @property
    def seq_len(self) -> int:
        return sum(p * p for p in self.patch_nums)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


def _levels(patch_nums: Sequence[int]) -> torch.Tensor:
    return torch.cat([torch.full((p * p,), i, dtype=torch.long) for i, p in enumerate(patch_nums)])


class SelfAttention(nn.Module):
    """Fused qkv with learned q/v biases (k bias fixed at zero); with ``attn_l2_norm`` q and k are
    unit vectors per head, q is scaled by exp(min(scale_mul, ln 100)) and the softmax scale is 1."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        c, h = cfg.embed_dim, cfg.num_heads
        self.num_heads, self.head_dim, self.l2_norm = h, c // h, cfg.attn_l2_norm
        self.mat_qkv = nn.Linear(c, 3 * c, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(c)), nn.Parameter(torch.zeros(c))
        self.register_buffer("zero_k_bias", torch.zeros(c))
        if self.l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, h, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.proj = Linear(c, c)
        self.attn_drop = cfg.attn_drop_rate
        self.proj_drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None, layer: int,
                window: CacheWindow | None) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        qkv = linear(x, self.mat_qkv.weight, bias).view(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd)
        if self.l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp())
            k = F.normalize(k, dim=-1)
        if cache is not None:  # one whole scale: it sees every cached (coarser) scale and itself
            k, v = cache.update(layer, k, v, window)
        out = attention(q, k, v, mask=mask, scale=self.scale, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class FFN(nn.Module):
    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        hidden = round(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1, self.fc2 = Linear(cfg.embed_dim, hidden), Linear(hidden, cfg.embed_dim)
        self.drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


class AdaLNSelfAttn(nn.Module):
    """x += gamma1 * attn(LN(x)(1 + scale1) + shift1); x += gamma2 * ffn(LN(x)(1 + scale2) + shift2)."""

    def __init__(self, cfg: VARConfig, drop_path_rate: float) -> None:
        super().__init__()
        c = cfg.embed_dim
        self.C, self.shared = c, cfg.shared_aln
        self.attn, self.ffn = SelfAttention(cfg), FFN(cfg)
        self.ln_wo_grad = nn.LayerNorm(c, eps=cfg.norm_eps, elementwise_affine=False)
        if self.shared:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, c) / c**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), Linear(c, 6 * c))
        self.drop_path = drop_path_rate

    def modulation(self, ada: torch.Tensor) -> torch.Tensor:
        """(B, 1, 6, C) gammas, scales and shifts from the class embedding (B, C), or with a shared AdaLN
        from its (B, 1, 6, C) projection. They depend on the class only, so samplers compute them once."""
        if self.shared:
            return self.ada_gss + ada
        return self.ada_lin(ada).view(-1, 1, 6, self.C)

    def forward(self, x: torch.Tensor, mods: torch.Tensor, mask, cache: KVCache | None = None, layer: int = 0,
                window: CacheWindow | None = None, mid: torch.Tensor | None = None) -> torch.Tensor:
        """``mods``: this block's :meth:`modulation` of the condition. ``mid``: added to the residual stream
        between the attention and the FFN sub-blocks (a distilled student's noise/data embedding)."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mods.unbind(2)
        h = self.attn(self.ln_wo_grad(x).mul(scale1.add(1)).add_(shift1), mask, cache, layer, window)
        x = x + drop_path(h.mul_(gamma1), self.drop_path, self.training)
        if mid is not None:
            x = x + mid
        h = self.ffn(self.ln_wo_grad(x).mul(scale2.add(1)).add_(shift2))
        return x + drop_path(h.mul(gamma2), self.drop_path, self.training)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, c: int, eps: float) -> None:
        super().__init__()
        self.C = c
        self.ln_wo_grad = nn.LayerNorm(c, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(c, 2 * c))

    def modulation(self, emb: torch.Tensor) -> torch.Tensor:
        return self.ada_lin(emb).view(-1, 1, 2, self.C)

    def forward(self, x: torch.Tensor, mods: torch.Tensor) -> torch.Tensor:
        """``mods``: :meth:`modulation` of the class embedding."""
        scale, shift = mods.unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add_(shift)


class SharedAdaLin(Linear):
    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(-1, 1, 6, self.out_features // 6)


class ScaleCondition:
    """What every scale step needs about the condition: the class embedding and the AdaLN modulations
    of every block and of the head. These depend on the class only; computing them once per sampling
    run instead of once per scale saves a (C x 6C) matrix-vector product per block and scale, which
    reads the whole AdaLN weight each time (about 7% of a VAR-d16 generation on a CPU)."""

    def __init__(self, emb: torch.Tensor, blocks: list[torch.Tensor], head: torch.Tensor) -> None:
        self.emb, self.blocks, self.head = emb, blocks, head


@register("var")
class VAR(Pretrained):
    """Scale-wise generator: teacher-forced ``forward``; ``condition`` / ``first_scale_input`` /
    ``scale_input`` / ``step`` for the samplers. Needs its VQ-VAE bound (``bind_tokenizer``) to turn
    codes into inputs; the VQ-VAE is not part of its state dict (as in the official release)."""

    config_class = VARConfig
    kind = "scale"
    # how the official sampler reads cfg_scale and top_p: guidance 1 + cfg * k / (K - 1) at scale k
    # (cfg 0 = unguided), and top-p computed on ascending cumulative probabilities
    sampling_conventions = {"cfg_schedule": "var", "top_p_rule": "var"}

    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        self.config = c = config
        scales = self.table_scales()
        C, L = c.embed_dim, sum(p * p for p in scales)
        self.first_l = scales[0] ** 2
        init_std = math.sqrt(1 / C / 3)
        self.word_embed = Linear(c.Cvae, C)
        self.class_emb = nn.Embedding(c.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))
        self.lvl_embed = nn.Embedding(len(scales), C)
        for t in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(t, mean=0, std=init_std)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if c.shared_aln else nn.Identity()
        rates = [c.drop_path_rate * i / max(c.depth - 1, 1) for i in range(c.depth)]
        self.blocks = nn.ModuleList(AdaLNSelfAttn(c, r) for r in rates)
        self.head_nm = AdaLNBeforeHead(C, c.norm_eps)
        self.head = Linear(C, c.vocab_size)
        self.init_buffers()
        self._tokenizer: tuple = ()

    def table_scales(self) -> list[int]:
        """The scales the position and level tables, the levels and the mask cover: the config's patch_nums
        (a distilled student prepends its start scale)."""
        return self.config.patch_nums

    @staticmethod
    def attention_bias(levels: torch.Tensor) -> torch.Tensor:
        """Levels (1, n) -> the additive training mask (1, 1, n, n): block-causal, a scale sees itself and
        every coarser one."""
        d = levels.view(1, -1, 1)
        n = levels.shape[1]
        return torch.where(d >= d.transpose(1, 2), 0.0, -torch.inf).reshape(1, 1, n, n)

    def init_buffers(self) -> None:
        """Level of each token and the training mask (persistent, as in the official state dict, but
        always recomputed from the config)."""
        with torch.device(self.head.weight.device):
            levels = _levels(self.table_scales()).view(1, -1)
            bias = self.attention_bias(levels)
        self.register_buffer("lvl_1L", levels)
        self.register_buffer("attn_bias_for_masking", bias)

    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02) -> None:
        """The official training initialisation (``build_vae_var``: init_std = sqrt(1 / 3C))."""
        C, depth = self.config.embed_dim, self.config.depth
        std = math.sqrt(1 / C / 3)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        with torch.no_grad():
            self.head.weight.mul_(init_head)
            self.head.bias.zero_()
            lin = self.head_nm.ada_lin[-1]
            lin.weight.mul_(init_adaln)
            lin.bias.zero_()
            for blk in self.blocks:
                blk.attn.proj.weight.div_(math.sqrt(2 * depth))
                blk.ffn.fc2.weight.div_(math.sqrt(2 * depth))
                if blk.shared:
                    blk.ada_gss[:, :, 2:].mul_(init_adaln)
                    blk.ada_gss[:, :, :2].mul_(init_adaln_gamma)
                else:
                    w = blk.ada_lin[-1].weight
                    w[2 * C :].mul_(init_adaln)
                    w[: 2 * C].mul_(init_adaln_gamma)
                    blk.ada_lin[-1].bias.zero_()

    # -- the bound VQ-VAE ------------------------------------------------------------------------
    def bind_tokenizer(self, vae) -> "VAR":
        """Attach the multi-scale VQ-VAE whose codes this model predicts (checked for compatibility)."""
        c = self.config
        vc = getattr(vae, "config", None)
        if getattr(vae, "kind", None) != "multiscale" or vc is None:
            raise ConfigError(f"VAR needs a multi-scale VQ-VAE, got {type(vae).__name__}")
        problems = []
        if vc.vocab_size != c.vocab_size:
            problems.append(f"vocab {vc.vocab_size} vs the model's {c.vocab_size}")
        if vc.z_channels != c.Cvae:
            problems.append(f"latent channels {vc.z_channels} vs the model's Cvae {c.Cvae}")
        if list(vc.v_patch_nums) != list(c.patch_nums):
            problems.append(f"patch_nums {vc.v_patch_nums} vs the model's {c.patch_nums}")
        if problems:
            raise ConfigError("this VQ-VAE does not fit the VAR model: " + "; ".join(problems))
        self._tokenizer = (vae,)
        return self

    @property
    def tokenizer(self):
        if not self._tokenizer:
            raise ConfigError("no VQ-VAE bound to this VAR model: call model.bind_tokenizer(vae) (argen.load does)")
        return self._tokenizer[0]

    # -- protocol attributes -----------------------------------------------------------------------
    @property
    def patch_nums(self) -> list[int]:
        return list(self.config.patch_nums)

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def code_vectors(self) -> torch.Tensor:
        """(V, Cvae): the bound VQ-VAE's codebook."""
        return self.tokenizer.quantize.embedding.weight

    def add_scale(self, si: int, f_hat: torch.Tensor | None, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale ``si``'s codes (ids, or code vectors (B, Cvae, pn, pn)) added to the running latent
        f_hat -> (f_hat, the next scale's input features), through the bound VQ-VAE."""
        return self.tokenizer.quantize.next_input(si, f_hat, codes)

    def null_condition(self, batch_size: int) -> torch.Tensor:
        return torch.full((batch_size,), self.config.num_classes, dtype=torch.long, device=self.head.weight.device)

    def check_condition(self, cond: Any, allow_null: bool = False) -> torch.Tensor:
        return check_class_ids(cond, self.config.num_classes, self.head.weight.device, allow_null)

    # -- forward passes ----------------------------------------------------------------------------
    def condition(self, labels: torch.Tensor) -> ScaleCondition:
        emb = self.class_emb(labels)
        ada = self.shared_ada_lin(emb)
        return ScaleCondition(emb, [blk.modulation(ada) for blk in self.blocks], self.head_nm.modulation(emb))

    def _lvl_pos(self, start: int, end: int) -> torch.Tensor:
        return self.lvl_embed(self.lvl_1L[:, start:end]) + self.pos_1LC[:, start:end]

    def first_scale_input(self, cond: ScaleCondition) -> torch.Tensor:
        b = cond.emb.shape[0]
        sos = cond.emb.unsqueeze(1).expand(b, self.first_l, -1) + self.pos_start.expand(b, self.first_l, -1)
        return sos + self._lvl_pos(0, self.first_l)

    def scale_input(self, features: torch.Tensor, si: int) -> torch.Tensor:
        """Scale ``si``'s input features (B, pn^2, Cvae) (from the VQ-VAE) -> embedded tokens (B, pn^2, C)."""
        start = sum(p * p for p in self.config.patch_nums[:si])
        return self.word_embed(features) + self._lvl_pos(start, start + features.shape[1])

    def _logits(self, h: torch.Tensor, cond: ScaleCondition) -> torch.Tensor:
        return self.head(self.head_nm(h.float(), cond.head).float()).float()

    def new_cache(self, batch_size: int, *, dtype: torch.dtype | None = None) -> KVCache:
        c, w = self.config, self.head.weight
        return KVCache(c.depth, batch_size, c.num_heads, c.seq_len, c.head_dim, dtype=dtype or w.dtype, device=w.device)

    def step(self, x: torch.Tensor, cond: ScaleCondition, cache: KVCache) -> torch.Tensor:
        """Run one scale's tokens (B, pn^2, C) against the cached coarser scales (no mask: a scale sees
        itself and everything before it); append to the cache; return logits (B, pn^2, V)."""
        window = cache.prepare(x.shape[1])
        for i, blk in enumerate(self.blocks):
            x = blk(x, cond.blocks[i], None, cache, i, window)
        cache.advance(window)
        return self._logits(x, cond)

    def forward(self, codes: torch.Tensor | Sequence[torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (B, L, V) for the flat code sequence in scale order; scale k's rows
        predict scale k from scales < k. ``codes``: per-scale list or flat (B, L) ids (needs the bound
        VQ-VAE), or the VQ-VAE's teacher-forcing features (B, L - 1, Cvae) as floats. Class dropout
        (``cond_drop_rate``) applies in training mode only."""
        if isinstance(codes, torch.Tensor) and codes.is_floating_point():
            feats = codes
        else:
            feats = self.tokenizer.teacher_forcing_input(codes)
        b, L = feats.shape[0], self.seq_len
        if feats.shape[1:] != (L - self.first_l, self.config.Cvae):
            raise ConfigError(f"teacher-forcing features must be (B, {L - self.first_l}, {self.config.Cvae}), "
                              f"got {tuple(feats.shape)}")
        labels = self.check_condition(cond, allow_null=True)
        if self.training and self.config.cond_drop_rate > 0:
            drop = torch.rand(b, device=labels.device) < self.config.cond_drop_rate
            labels = torch.where(drop, self.config.num_classes, labels)
        cnd = self.condition(labels)
        sos = cnd.emb.unsqueeze(1).expand(b, self.first_l, -1) + self.pos_start.expand(b, self.first_l, -1)
        x = torch.cat([sos, self.word_embed(feats.float())], dim=1)
        x = x + (self.lvl_embed(self.lvl_1L.expand(b, -1)) + self.pos_1LC)
        mask = self.attn_bias_for_masking.to(x.dtype)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cnd.blocks[i], mask)
        return self._logits(x, cnd)
