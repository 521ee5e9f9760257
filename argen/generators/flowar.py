"""FlowAR (scale-wise autoregression with a flow-matching head, arXiv 2412.15205): the VAE latent is
area-downsampled to a pyramid of scales 1, 2, 4, ... H; an AR transformer (MAR-style encoder and
decoder stacks, AdaLN on the class, block-causal attention) gives one condition per token of each scale
from the coarser ones, and the flow head turns noise into that scale's latents (t = 1 noise, t = 0 data).

Key names and numerics follow the official ``models/flowar.py`` / ``flowmodel.py`` / ``flowloss.py``
(FlowAR-S/L/H), so the released checkpoints load strictly and give the official outputs.

    model = FlowAR(FlowARConfig.preset("flowar_small"))
    loss = model(latents, labels)                      # training: latents (B, 16, 16, 16) = VAE * 0.2325
    # inference, one scale per step (what argen.samplers' flowar sampler does):
    emb = model.class_embedding(labels); cache = model.new_cache(B)
    z = model.step(None, emb, cache)                   # scale 1's conditions (B, 1, D)
    v = model.velocity(x_t, t, z)                      # flow velocity of scale 1's tokens (B, 1, C)
    tokens = model.next_scale_tokens(x0_latents, 1)    # the next scale's input tokens ...
    z = model.step(tokens, emb, cache)                 # ... and its conditions (B, 4, D)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from argen.errors import ConfigError
from argen.generators.condition import check_class_ids
from argen.generators.flowar_head import GEGLU, Attention, FlowHead, geglu_hidden, rms_norm
from argen.generators.mar_head import _modulate
from argen.modeling import Pretrained, build_config, register
from argen.nn.kv_cache import CacheWindow, KVCache
from argen.nn.linear import Linear
from argen.nn.norms import RMSNorm

OFFICIAL_CLASS_ROWS = 1001  # the official class table always has 1001 rows; row 1000 is the null class
SAMPLING_UPSAMPLE = 16  # official sample_tokens hard-codes the intermediate bicubic size (training: H)

PRESETS: dict[str, dict[str, Any]] = {
    # the factories fix widths, depths, heads and cross; diffloss_d/w are the README's command lines
    "flowar_small": dict(encoder_embed_dim=768, encoder_depth=6, encoder_num_heads=12, decoder_embed_dim=768,
                         decoder_depth=6, decoder_num_heads=12, cross=False, diffloss_d=2, diffloss_w=1024),
    "flowar_large": dict(encoder_embed_dim=1024, encoder_depth=8, encoder_num_heads=16, decoder_embed_dim=1024,
                         decoder_depth=8, decoder_num_heads=16, cross=True, diffloss_d=12, diffloss_w=1024),
    "flowar_huge": dict(encoder_embed_dim=1536, encoder_depth=15, encoder_num_heads=16, decoder_embed_dim=1536,
                        decoder_depth=15, decoder_num_heads=16, cross=True, use_checkpoint=True, diffloss_d=12,
                        diffloss_w=1536),
}


@dataclass
class FlowARConfig:
    """The official ``FlowAR`` constructor arguments (``norm_layer`` is unused by the blocks). Defaults
    are the released models' eval.py values; widths and depths default to MAR's, so use a preset."""

    img_size: int = 256
    vae_stride: int = 16
    patch_size: int = 1
    encoder_embed_dim: int = 1024
    encoder_depth: int = 16
    encoder_num_heads: int = 16
    decoder_embed_dim: int = 1024
    decoder_depth: int = 16
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    vae_embed_dim: int = 16
    label_drop_prob: float = 0.1
    class_num: int = 1000
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    buffer_size: int = 0
    diffloss_d: int = 3
    diffloss_w: int = 1024
    scale: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    cross: bool = False
    use_checkpoint: bool = False

    def __post_init__(self) -> None:
        self.scale = [int(s) for s in self.scale]
        if self.img_size % self.vae_stride:
            raise ConfigError(f"img_size {self.img_size} must be a multiple of vae_stride {self.vae_stride}")
        if self.patch_size != 1:
            raise ConfigError(f"FlowAR works on single latents per token: patch_size must be 1, got {self.patch_size}")
        if self.buffer_size != 0:
            raise ConfigError("buffer_size must be 0 (the official scale segmentation assumes it), "
                              f"got {self.buffer_size}")
        check_scales(self.scale, self.latent_size, f"img_size {self.img_size} / vae_stride {self.vae_stride}")
        for what, dim, heads in (("encoder", self.encoder_embed_dim, self.encoder_num_heads),
                                 ("decoder", self.decoder_embed_dim, self.decoder_num_heads)):
            if dim % heads or (dim // heads) % 4:
                raise ConfigError(f"{what}_embed_dim {dim} must split into {what}_num_heads {heads} heads of a "
                                  "multiple of 4 channels (2-D RoPE)")
        if self.decoder_embed_dim != self.encoder_embed_dim:
            raise ConfigError(f"decoder_embed_dim {self.decoder_embed_dim} must equal encoder_embed_dim "
                              f"{self.encoder_embed_dim}: the class embedding modulates both stacks")
        heads = self.diffloss_w // 64
        if heads < 1 or self.diffloss_w % heads or (self.diffloss_w // heads) % 4:
            raise ConfigError(f"diffloss_w {self.diffloss_w} must be >= 64 and split into diffloss_w // 64 heads "
                              "of a multiple of 4 channels")
        if self.class_num < 1:
            raise ConfigError(f"class_num must be >= 1, got {self.class_num}")

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "FlowARConfig":
        return build_config(cls, PRESETS, name, overrides, "FlowAR")

    @property
    def latent_size(self) -> int:
        return self.img_size // self.vae_stride

    @property
    def seq_len(self) -> int:
        return sum(s * s for s in self.scale)

    @property
    def segments(self) -> list[int]:
        """Start offsets of every scale in the token sequence, plus the total length."""
        out = [0]
        for s in self.scale:
            out.append(out[-1] + s * s)
        return out

    @property
    def class_rows(self) -> int:
        """1001 as the official (null class 1000), or class_num + 1 for more than 1000 classes."""
        return max(self.class_num + 1, OFFICIAL_CLASS_ROWS)


def check_scales(scales: list[int], latent_size: int, source: str = "the latent") -> None:
    """FlowAR's pyramid: 1, 2, 4, ... doubling up to the latent size (ConfigError naming the problem)."""
    if not scales or scales[0] != 1:
        raise ConfigError(f"the scale schedule must start at 1 (the class token conditions a 1x1 scale), got {scales}")
    bad = [f"{a}->{b}" for a, b in zip(scales, scales[1:]) if b != 2 * a]
    if bad:
        raise ConfigError(f"every scale must double the previous one, got {scales} ({', '.join(bad)})")
    if scales[-1] != latent_size:
        raise ConfigError(f"the scale schedule {scales} must end at the latent size {latent_size} "
                          f"({source}), not {scales[-1]}")


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h * w, C), row-major tokens."""
    return latents.flatten(2).transpose(1, 2)


def unpatchify(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(B, side * side, C) -> (B, C, side, side)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


class ARBlock(nn.Module):
    """x += gamma1 attn(norm(x)(1 + scale1) + shift1); x += gamma2 mlp(norm(x)(1 + scale2) + shift2),
    modulation from the class embedding (``ada_lin``, order gamma1, gamma2, scale1, scale2, shift1, shift2)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.dim = dim
        self.attn = Attention(dim, num_heads, qkv_bias=True, attn_drop=attn_drop, proj_drop=proj_drop)
        self.mlp = GEGLU(dim, geglu_hidden(dim, mlp_ratio), proj_drop)
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, ada: torch.Tensor, sides: list[int], mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0,
                window: CacheWindow | None = None) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(ada).view(-1, 1, 6, self.dim).unbind(2)
        x = x + gamma1 * self.attn(_modulate(rms_norm(x), shift1, scale1), sides, mask, cache, layer, window)
        return x + gamma2 * self.mlp(_modulate(rms_norm(x), shift2, scale2))


@dataclass
class ScaleCache:
    """KV caches of both stacks plus the index of the next scale to run."""

    encoder: KVCache
    decoder: KVCache
    scale: int = 0


@register("flowar")
class FlowAR(Pretrained):
    """Scale-wise flow generator: teacher-forced ``forward`` (flow-matching loss); for samplers
    ``class_embedding`` / ``new_cache`` / ``step`` (one scale's conditions) / ``velocity`` (the head) /
    ``next_scale_tokens``. Tokens are (B, s*s, C) in the scaled VAE latent space."""

    config_class = FlowARConfig
    kind = "flow-scale"
    sampling_conventions = {"cfg_schedule": "linear"}  # cfg ramps 1 -> cfg over the scales

    def __init__(self, config: FlowARConfig) -> None:
        super().__init__()
        self.config = c = config
        D, L = c.encoder_embed_dim, c.seq_len
        self.class_emb = nn.Embedding(c.class_rows, D)
        self.z_proj = Linear(c.vae_embed_dim, D)
        self.z_proj_ln = RMSNorm(D, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, L, D))
        blk = (c.mlp_ratio, c.attn_dropout, c.proj_dropout)
        self.encoder_blocks = nn.ModuleList(ARBlock(D, c.encoder_num_heads, *blk) for _ in range(c.encoder_depth))
        self.encoder_norm = RMSNorm(D, eps=1e-6)
        self.decoder_embed = Linear(D, c.decoder_embed_dim)
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, L, c.decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(ARBlock(c.decoder_embed_dim, c.decoder_num_heads, *blk)
                                            for _ in range(c.decoder_depth))
        self.decoder_norm = RMSNorm(c.decoder_embed_dim, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, L, c.decoder_embed_dim))
        self.flownet = FlowHead(c.vae_embed_dim, c.diffloss_w, c.decoder_embed_dim, c.diffloss_d, c.cross)
        self.init_buffers()

    def init_buffers(self) -> None:
        """The block-causal mask (persistent, in the official state dict as float 0 / -inf, but always
        recomputed from the scales): a token sees every token of its own and all coarser scales."""
        with torch.device(self.class_emb.weight.device):
            level = torch.cat([torch.full((s * s,), i) for i, s in enumerate(self.config.scale)])
            allowed = level[:, None] >= level[None, :]
            mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
        self.register_buffer("mask", mask[None, None])

    def init_weights(self) -> None:
        """Training initialisation in MAR's style: N(0, 0.02) embeddings and position tables, xavier
        linears, unit norms; the head's output and AdaLN start at zero."""
        for p in (self.class_emb.weight, self.encoder_pos_embed_learned, self.decoder_pos_embed_learned,
                  self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        self.flownet.init_weights()

    # -- protocol attributes ---------------------------------------------------------------------
    @property
    def scales(self) -> list[int]:
        return list(self.config.scale)

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def token_dim(self) -> int:
        return self.config.vae_embed_dim

    @property
    def latent_grid(self) -> tuple[int, int]:
        return (self.config.latent_size, self.config.latent_size)

    token_grid = latent_grid  # the final tokens are the latents, one per position

    @property
    def num_classes(self) -> int:
        return self.config.class_num

    @property
    def null_class(self) -> int:
        return self.config.class_rows - 1

    def null_condition(self, batch_size: int) -> torch.Tensor:
        return torch.full((batch_size,), self.null_class, dtype=torch.long, device=self.class_emb.weight.device)

    def check_condition(self, cond: Any, allow_null: bool = False) -> torch.Tensor:
        """Class ids (B,) int64; ``allow_null`` also accepts the null class (``null_class``)."""
        dev = self.class_emb.weight.device
        if allow_null:
            ids = torch.as_tensor(cond, device=dev)
            if ids.dim() == 1 and ids.numel() and not ids.is_floating_point():
                real = ids[ids != self.null_class]
                if real.numel():
                    check_class_ids(real, self.config.class_num, dev)
                return ids.long()
        return check_class_ids(cond, self.config.class_num, dev)

    def check_tokenizer(self, tokenizer: Any) -> None:
        """ConfigError unless ``tokenizer`` (a continuous VAE) gives latents of this model's shape."""
        c = self.config
        channels = getattr(tokenizer, "latent_channels", None)
        if channels != c.vae_embed_dim:
            raise ConfigError(f"the VAE's latents have {channels} channels, "
                              f"this FlowAR models {c.vae_embed_dim} (vae_embed_dim)")
        grid = tuple(tokenizer.latent_grid(c.img_size))
        if grid != self.latent_grid:
            raise ConfigError(f"the VAE's latent grid at {c.img_size}px is {grid}, but this FlowAR's scales end at "
                              f"{self.latent_grid} (img_size {c.img_size} / vae_stride {c.vae_stride})")

    def check_latents(self, latents: torch.Tensor) -> None:
        h = self.config.latent_size
        if latents.dim() != 4 or tuple(latents.shape[1:]) != (self.token_dim, h, h):
            raise ConfigError(f"latents must be (B, {self.token_dim}, {h}, {h}) for this FlowAR (img_size "
                              f"{self.config.img_size} / vae_stride {self.config.vae_stride}), "
                              f"got {tuple(latents.shape)}")

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final-scale tokens (B, H*H, C) -> latents (B, C, H, H) for the VAE decoder."""
        return unpatchify(tokens, self.config.latent_size)

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        return patchify(latents)

    # -- scale pyramid -----------------------------------------------------------------------------
    def scale_targets(self, latents: torch.Tensor) -> list[torch.Tensor]:
        """Area-downsampled latents per scale, as tokens (B, s*s, C); the last scale is the latent."""
        self.check_latents(latents)
        h = self.config.latent_size
        return [patchify(latents if s == h else F.interpolate(latents, size=(s, s), mode="area")) for s in self.scales]

    def next_scale_tokens(self, latents: torch.Tensor, k: int, upsample: int | None = None) -> torch.Tensor:
        """Input tokens (B, s_k^2, C) of scale k from the previous scale's latents (B, C, s, s):
        area(bicubic(latents, (U, U)), (s_k, s_k)). ``upsample`` U: the latent size in training; the
        official sampler uses 16 (``SAMPLING_UPSAMPLE``); they agree at 256px."""
        if not 1 <= k < len(self.config.scale):
            raise ConfigError(f"scale index {k} out of range 1..{len(self.config.scale) - 1}")
        u = upsample or self.config.latent_size
        s = self.config.scale[k]
        up = F.interpolate(latents, size=(u, u), mode="bicubic")
        return patchify(F.interpolate(up, size=(s, s), mode="area"))

    def teacher_tokens(self, targets: list[torch.Tensor], upsample: int | None = None) -> torch.Tensor:
        """Teacher-forcing inputs (B, L - 1, C) of scales 2..K built from the per-scale targets."""
        parts = [self.next_scale_tokens(unpatchify(t, s), k + 1, upsample)
                 for k, (t, s) in enumerate(zip(targets[:-1], self.scales))]
        return torch.cat(parts, dim=1)

    # -- the AR transformer --------------------------------------------------------------------------
    def class_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        return self.class_emb(labels)

    def _run(self, blocks: nn.ModuleList, x: torch.Tensor, ada: torch.Tensor, sides: list[int],
             mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        window = cache.prepare(x.shape[1]) if cache is not None else None
        for i, blk in enumerate(blocks):
            if self.config.use_checkpoint and self.training and torch.is_grad_enabled() and cache is None:
                x = checkpoint(blk, x, ada, sides, mask, use_reentrant=False)
            else:
                x = blk(x, ada, sides, mask, cache, i, window)
        if cache is not None:
            cache.advance(window)
        return x

    def run_encoder(self, x: torch.Tensor, ada: torch.Tensor, start: int, sides: list[int],
               mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Encoder stack on embedded tokens x (B, n, D) at sequence offset ``start``."""
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned[:, start : start + x.shape[1]])
        return self.encoder_norm(self._run(self.encoder_blocks, x, ada, sides, mask, cache))

    def run_decoder(self, x: torch.Tensor, ada: torch.Tensor, start: int, sides: list[int],
               mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Decoder stack on encoder outputs -> the flow head's conditions z (B, n, D)."""
        n = x.shape[1]
        x = self.decoder_embed(x) + self.decoder_pos_embed_learned[:, start : start + n]
        x = self.decoder_norm(self._run(self.decoder_blocks, x, ada, sides, mask, cache))
        return x + self.diffusion_pos_embed_learned[:, start : start + n]

    def encoder_input(self, tokens: torch.Tensor, ada: torch.Tensor) -> torch.Tensor:
        """[class embedding ; z_proj(next-scale tokens)] (B, L, D), before the position table."""
        return torch.cat([ada[:, None].to(tokens.dtype), self.z_proj(tokens)], dim=1)

    def transformer(self, tokens: torch.Tensor, ada: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing over the whole sequence with the block-causal mask: next-scale tokens
        (B, L - 1, C) and class embeddings (B, D) -> (encoder output, conditions z), both (B, L, D)."""
        if tokens.shape[1:] != (self.seq_len - 1, self.token_dim):
            raise ConfigError(f"teacher tokens must be (B, {self.seq_len - 1}, {self.token_dim}), "
                              f"got {tuple(tokens.shape)}")
        mask = self.mask == 0
        enc = self.run_encoder(self.encoder_input(tokens, ada), ada, 0, self.scales, mask)
        return enc, self.run_decoder(enc, ada, 0, self.scales, mask)

    def new_cache(self, batch_size: int, *, dtype: torch.dtype | None = None) -> ScaleCache:
        c, w = self.config, self.class_emb.weight
        kw = dict(dtype=dtype or w.dtype, device=w.device)
        enc = KVCache(c.encoder_depth, batch_size, c.encoder_num_heads, c.seq_len,
                      c.encoder_embed_dim // c.encoder_num_heads, **kw)
        dec = KVCache(c.decoder_depth, batch_size, c.decoder_num_heads, c.seq_len,
                      c.decoder_embed_dim // c.decoder_num_heads, **kw)
        return ScaleCache(enc, dec)

    def step(self, tokens: torch.Tensor | None, ada: torch.Tensor, cache: ScaleCache) -> torch.Tensor:
        """Conditions z (B, s_k^2, D) of the next scale k: ``tokens`` None for the first scale (the
        class token), else its input tokens (B, s_k^2, C) (:meth:`next_scale_tokens`). It attends to
        the cached coarser scales and itself (no mask), and is appended to the cache."""
        k = cache.scale
        if k >= len(self.config.scale):
            raise ConfigError(f"all {len(self.config.scale)} scales have been generated already")
        s, start = self.config.scale[k], self.config.segments[k]
        if (tokens is None) != (k == 0):
            raise ConfigError("the first scale takes no tokens (it is the class token); later scales need theirs")
        if tokens is None:
            x = ada[:, None]
        else:
            if tokens.shape[1:] != (s * s, self.token_dim):
                raise ConfigError(f"scale {k} tokens must be (B, {s * s}, {self.token_dim}), got {tuple(tokens.shape)}")
            x = self.z_proj(tokens)
        z = self.run_decoder(self.run_encoder(x, ada, start, [s], cache=cache.encoder), ada, start, [s],
                             cache=cache.decoder)
        cache.scale += 1
        return z

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor:
        """The flow head: velocity (B, n, C) of one scale's tokens x_t at time t (1 = noise) given z."""
        if not isinstance(t, torch.Tensor):
            t = torch.full((x_t.shape[0],), float(t), dtype=torch.float64, device=x_t.device)
        return self.flownet(x_t, t.to(x_t.dtype), z)

    # -- training ----------------------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching loss of scaled VAE latents (B, C, H, H) with classes ``labels``:
        sum_k mean_b(mse_k) s_k^2 / H^2. Random draws, in the official order: the label drop (training
        mode), then per scale t ~ U(0, 1) per sample and the noise."""
        b, dev = latents.shape[0], latents.device
        targets = self.scale_targets(latents)
        if self.training:
            drop = torch.rand(b, device=dev, generator=generator) < self.config.label_drop_prob
            labels = torch.where(drop, self.null_class, labels)
        ada = self.class_embedding(labels)
        _, z = self.transformer(self.teacher_tokens(targets), ada)
        return self.flow_loss(targets, z, generator)

    def flow_loss(self, targets: list[torch.Tensor], z: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Per scale: x_t = (1 - t) x_0 + t eps, target eps - x_0, MSE weighted by s_k^2 / s_K^2."""
        seg, last = self.config.segments, self.config.scale[-1] ** 2
        loss = z.new_zeros(())
        for k, x0 in enumerate(targets):
            t = torch.rand(x0.shape[0], 1, 1, device=x0.device, dtype=x0.dtype, generator=generator)
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
            x_t = (1 - t) * x0 + t * noise
            v = self.flownet(x_t, t.flatten(), z[:, seg[k] : seg[k + 1]])
            mse = ((v - (noise - x0)) ** 2).mean(dim=(1, 2))
            loss = loss + mse.mean() * x0.shape[1] / last
        return loss
