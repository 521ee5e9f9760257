"""MAR (masked autoregressive generation with a per-token diffusion head, arXiv 2406.11838): an MAE-
style encoder/decoder transformer over continuous VAE tokens that predicts, for every masked token,
a condition z from which the diffusion head samples the token.

Key names and numerics follow the official ``models/mar.py`` (MAR-B/L/H), so official checkpoints
load strictly and give the official outputs.

    mar = MAR(MARConfig.preset("mar_base"))
    tokens = mar.patchify(latents)                    # (B, 16, 16, 16) latents*0.2325 -> (B, 256, 16)
    loss = mar(tokens, labels)                        # training: random order, masked diffusion loss
    z = mar.conditions(tokens, mask, class_embedding) # inference: (B, 256, D) per-token conditions
    x = mar.sample_tokens(z[to_pred], temperature, cfg, rng, 100)   # what argen.samplers' mar sampler does
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from argen.errors import ConfigError
from argen.generators.condition import check_class_ids
from argen.generators.mar_head import DiffusionHead
from argen.modeling import Pretrained, build_config, register
from argen.nn.diffusion import check_noise_schedule
from argen.nn.linear import Linear
from argen.nn.position import sincos_2d
from argen.nn.rope import rope_2d_table
from argen.nn.vit import ViTBlock

PRESETS: dict[str, dict[str, Any]] = {
    # the evaluated checkpoints' diffusion MLPs (main_mar.py's defaults are 12 / 1536)
    "mar_base": dict(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, decoder_embed_dim=768,
                     decoder_depth=12, decoder_num_heads=12, diffloss_d=6, diffloss_w=1024),
    "mar_large": dict(encoder_embed_dim=1024, encoder_depth=16, encoder_num_heads=16, decoder_embed_dim=1024,
                      decoder_depth=16, decoder_num_heads=16, diffloss_d=8, diffloss_w=1280),
    "mar_huge": dict(encoder_embed_dim=1280, encoder_depth=20, encoder_num_heads=16, decoder_embed_dim=1280,
                     decoder_depth=20, decoder_num_heads=16, diffloss_d=12, diffloss_w=1536),
}


# the values argen's extensions accept (MARConfig's fenced block); the first of each is the official behaviour
POS_EMBED_INITS = ("normal", "sincos")
MASK_RATIO_DISTS = ("truncnorm", "cosine")
ATTN_BIASES = ("none", "distance")
ROPES = ("none", "2d")


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes 2^(-8 h / H), h = 1..H: from strongly local heads to nearly global ones."""
    return torch.pow(2.0, -8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads)


def distance_bias(positions: torch.Tensor, grid: int, heads: int) -> torch.Tensor:
    """Additive attention bias (B, heads, T, T) = -slope_h * the Euclidean grid distance between the
    tokens at ``positions`` (B, T) (raster indices on a grid x grid image); -1 marks a buffer token,
    which attends and is attended without bias."""
    yx = torch.stack([torch.div(positions, grid, rounding_mode="floor"), positions % grid], dim=-1).float()
    dist = torch.cdist(yx, yx)
    buffer = positions < 0
    dist = dist.masked_fill(buffer[:, :, None] | buffer[:, None, :], 0.0)
    return -alibi_slopes(heads).to(dist.device)[None, :, None, None] * dist[:, None]


def rope_2d_rows(positions: torch.Tensor, grid: int, head_dim: int) -> torch.Tensor:
    """Rotary tables (B, T, head_dim/2, 2) for the tokens at ``positions`` (B, T) on a grid x grid
    image (LlamaGen's 2D split: half the pairs rotate with the row, half with the column); a buffer
    token (-1) gets the identity rotation, so its scores stay position-free."""
    table = rope_2d_table(grid, head_dim, n_prefix=0).to(positions.device)
    identity = torch.zeros_like(table[:1])
    identity[..., 0] = 1.0
    return torch.cat([identity, table])[positions + 1]


@dataclass
class MARConfig:
    """The official ``MAR`` constructor arguments, in the official order with the official defaults
    (``norm_layer`` is LayerNorm eps 1e-6 in all of them), then argen's extensions in a fenced block:
    options the official model does not have, each off (the official behaviour) by default. The fields
    are flat, so a saved ``config.json`` is ``MARConfig(**its_dict)``. Why the extensions exist, and
    what they measured, is in the bundled model's card (assets/shapes-mar/README.md)."""

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
    mask_ratio_min: float = 0.7
    label_drop_prob: float = 0.1
    class_num: int = 1000
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    buffer_size: int = 64
    diffloss_d: int = 3
    diffloss_w: int = 1024
    num_sampling_steps: str | int = "100"
    diffusion_batch_mul: int = 4
    grad_checkpointing: bool = False

    # ---- argen's extensions — not in the official MAR; every default is the official behaviour ----
    noise_schedule: str = "cosine"       # the head's beta schedule: 'cosine' (official) or 'linear'
    pos_embed_init: str = "normal"       # token position embeddings start at N(0, 0.02) or at MAE's 2D sin-cos table
    mask_ratio_dist: str = "truncnorm"   # training mask-ratio law: 'truncnorm' (official) or 'cosine' (the sampler's)
    attn_bias: str = "none"              # 'distance': ALiBi's per-head penalty on 2D grid distance (no parameters)
    rope: str = "none"                   # '2d': rotate q and k by the token's grid row and column (no parameters)
    x0_loss_weight: float = 0.0          # weight of an MSE loss on a linear read-out of z (> 0 adds x0_head)
    raster_order_prob: float = 0.0       # fraction of training samples with a raster order instead of a random one
    # ---- end of argen's extensions ----

    EXTENSIONS: ClassVar[tuple[str, ...]] = ("noise_schedule", "pos_embed_init", "mask_ratio_dist", "attn_bias",
                                             "rope", "x0_loss_weight", "raster_order_prob")
    # fields that shape training only, not the network: a run may continue another with other values
    # (dropout rates are free anyway; x0_loss_weight is not free: 0 means no read-out head)
    TRAINING_ONLY: ClassVar[tuple[str, ...]] = ("mask_ratio_min", "mask_ratio_dist", "diffusion_batch_mul",
                                                "raster_order_prob", "grad_checkpointing")

    def __post_init__(self) -> None:
        self._check_official()
        self._check_extensions()

    def _check_official(self) -> None:
        if self.img_size % self.vae_stride:
            raise ConfigError(f"img_size {self.img_size} must be a multiple of vae_stride {self.vae_stride}")
        if (self.img_size // self.vae_stride) % self.patch_size:
            raise ConfigError(f"the latent size {self.img_size // self.vae_stride} must be a multiple of "
                              f"patch_size {self.patch_size}")
        for what, dim, heads in (("encoder", self.encoder_embed_dim, self.encoder_num_heads),
                                 ("decoder", self.decoder_embed_dim, self.decoder_num_heads)):
            if dim % heads:
                raise ConfigError(f"{what}_embed_dim {dim} must be a multiple of {what}_num_heads {heads}")
        if not 0.0 <= self.mask_ratio_min <= 1.0:
            raise ConfigError(f"mask_ratio_min must be in [0, 1], got {self.mask_ratio_min}")
        if not str(self.num_sampling_steps).isdigit() or int(self.num_sampling_steps) < 1:
            raise ConfigError(f"num_sampling_steps must be a positive integer, got {self.num_sampling_steps!r}")

    def _check_extensions(self) -> None:
        check_noise_schedule(self.noise_schedule)
        for name, known in (("pos_embed_init", POS_EMBED_INITS), ("rope", ROPES),
                            ("mask_ratio_dist", MASK_RATIO_DISTS), ("attn_bias", ATTN_BIASES)):
            if getattr(self, name) not in known:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; known: {', '.join(known)}")
        heads = (self.encoder_embed_dim // self.encoder_num_heads, self.decoder_embed_dim // self.decoder_num_heads)
        if self.rope == "2d" and any(h % 4 for h in heads):
            raise ConfigError(f"rope='2d' needs head dimensions that are multiples of 4 (row and column pairs), "
                              f"got encoder {heads[0]}, decoder {heads[1]}")
        if self.x0_loss_weight < 0:
            raise ConfigError(f"x0_loss_weight must be >= 0, got {self.x0_loss_weight}")
        if not 0.0 <= self.raster_order_prob <= 1.0:
            raise ConfigError(f"raster_order_prob must be in [0, 1], got {self.raster_order_prob}")

    def extensions_in_use(self) -> dict[str, Any]:
        """argen's extensions set away from the official behaviour, name -> value ({} for an official MAR)."""
        official = {f.name: f.default for f in fields(self) if f.name in self.EXTENSIONS}
        return {name: getattr(self, name) for name in self.EXTENSIONS if getattr(self, name) != official[name]}

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "MARConfig":
        return build_config(cls, PRESETS, name, overrides, "MAR")

    @property
    def grid(self) -> int:
        return self.img_size // self.vae_stride // self.patch_size

    @property
    def seq_len(self) -> int:
        return self.grid**2

    @property
    def token_embed_dim(self) -> int:
        return self.vae_embed_dim * self.patch_size**2


def _kept_slots(keep: torch.Tensor) -> torch.Tensor:
    """(B, T) slot indices, each row's kept slots first in sequence order, then its dropped ones (padding);
    T is the largest kept count."""
    counts = keep.sum(1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    return order[:, : int(counts.max())]


@register("mar")
class MAR(Pretrained):
    """Continuous-token generator: ``conditions`` gives per-token diffusion conditions for a partly
    known token sequence; ``diffloss`` samples tokens from them. Masks: 1 / True = unknown (masked)."""

    config_class = MARConfig
    kind = "continuous"
    sampling_conventions = {"cfg_schedule": "linear"}

    def __init__(self, config: MARConfig) -> None:
        super().__init__()
        self.config = c = config
        enc, dec, n, buf = c.encoder_embed_dim, c.decoder_embed_dim, c.seq_len, c.buffer_size
        self.class_emb = nn.Embedding(c.class_num, enc)
        self.fake_latent = nn.Parameter(torch.zeros(1, enc))
        self.z_proj = Linear(c.token_embed_dim, enc)
        self.z_proj_ln = nn.LayerNorm(enc, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n + buf, enc))
        block = dict(mlp_ratio=c.mlp_ratio, attn_drop=c.attn_dropout, proj_drop=c.proj_dropout)
        self.encoder_blocks = nn.ModuleList(ViTBlock(enc, c.encoder_num_heads, **block) for _ in range(c.encoder_depth))
        self.encoder_norm = nn.LayerNorm(enc, eps=1e-6)
        self.decoder_embed = Linear(enc, dec)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n + buf, dec))
        self.decoder_blocks = nn.ModuleList(ViTBlock(dec, c.decoder_num_heads, **block) for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(dec, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, n, dec))
        self.diffloss = DiffusionHead(c.token_embed_dim, dec, c.diffloss_w, c.diffloss_d, int(c.num_sampling_steps),
                                     noise_schedule=c.noise_schedule)
        # training only (x0_loss_weight > 0); sampling never reads it
        self.x0_head = Linear(dec, c.token_embed_dim) if c.x0_loss_weight > 0 else None

    def init_weights(self) -> None:
        """The official initialisation (N(0, 0.02) embeddings and tokens, xavier linears); with
        ``pos_embed_init='sincos'`` the token rows of the position embeddings start at a 2D sin-cos table."""
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        if self.config.pos_embed_init == "sincos":
            g, n = self.config.grid, self.config.seq_len
            with torch.no_grad():
                for p in (self.encoder_pos_embed_learned, self.decoder_pos_embed_learned,
                          self.diffusion_pos_embed_learned):
                    p[0, -n:] = sincos_2d(g, g, p.shape[-1]).to(p)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.diffloss.net.init_weights()

    # -- protocol attributes ---------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def token_dim(self) -> int:
        return self.config.token_embed_dim

    @property
    def token_grid(self) -> tuple[int, int]:
        return (self.config.grid, self.config.grid)

    @property
    def num_classes(self) -> int:
        return self.config.class_num

    @property
    def latent_grid(self) -> tuple[int, int]:
        g = self.config.img_size // self.config.vae_stride
        return (g, g)

    def check_condition(self, cond: Any, allow_null: bool = False) -> torch.Tensor:
        return check_class_ids(cond, self.config.class_num, self.fake_latent.device)

    def check_tokenizer(self, tokenizer: Any) -> None:
        """ConfigError unless ``tokenizer`` (a continuous VAE) gives latents this model can read."""
        channels = getattr(tokenizer, "latent_channels", None)
        if channels != self.config.vae_embed_dim:
            raise ConfigError(f"the tokenizer's latents have {channels} channels, the generator models "
                              f"{self.config.vae_embed_dim} (vae_embed_dim)")

    @property
    def sampling_steps(self) -> int:
        """The head's reverse steps per token when a sampler names none."""
        return int(self.config.num_sampling_steps)

    def sample_tokens(self, z: torch.Tensor, temperature: float, cfg: float | torch.Tensor | None,
                      generator: torch.Generator | None, steps: int, final_noise: bool = False) -> torch.Tensor:
        """One token per condition z (N, D) through the head's ``steps``-step reverse chain
        (``cfg``: z is [cond ; uncond] (2N, D); a scale, or one per token (N,)). ``final_noise``: the
        last step draws from its Gaussian instead of taking its mean (the official)."""
        return self.diffloss.sample(z, temperature, cfg, generator, steps, final_noise)

    def step_gaussian(self, x_t: torch.Tensor, i: int, z: torch.Tensor, cfg: float | torch.Tensor | None,
                      steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance of reverse step ``i`` of the head's ``steps``-step chain."""
        return self.diffloss.step_gaussian(x_t, i, z, cfg, self.diffloss.chain(steps))

    def class_embedding(self, labels: torch.Tensor | None, batch_size: int | None = None) -> torch.Tensor:
        """Class embeddings (B, D); ``labels`` None gives the unconditional ``fake_latent`` rows."""
        if labels is None:
            return self.fake_latent.expand(batch_size, -1)
        return self.class_emb(labels)

    # -- tokens <-> latents ------------------------------------------------------------------------
    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/p * W/p, C * p * p), channels outermost inside a token."""
        b, c, h, w = latents.shape
        if c != self.config.vae_embed_dim or (h, w) != self.latent_grid:
            raise ConfigError(f"latents must be (B, {self.config.vae_embed_dim}, {self.latent_grid[0]}, "
                              f"{self.latent_grid[1]}) for this MAR, got {tuple(latents.shape)}")
        p = self.config.patch_size
        x = latents.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        p, c, g = self.config.patch_size, self.config.vae_embed_dim, self.config.grid
        x = tokens.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, g * p, g * p)

    # -- the transformer -----------------------------------------------------------------------------
    def _with_buffer(self, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([mask.new_zeros(mask.shape[0], self.config.buffer_size), mask], dim=1).bool()

    def _positions(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """(B, buffer + L) raster index of every sequence slot, -1 for the buffer."""
        buf, n = self.config.buffer_size, self.seq_len
        pos = torch.cat([torch.full((buf,), -1, device=device), torch.arange(n, device=device)])
        return pos.expand(batch_size, -1)

    def _position_terms(self, batch_size: int, device: torch.device, heads: int, dim: int,
                        slots: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The ``attn_bias`` and ``rope`` terms for the sequence slots (only ``slots`` (B, T), the
        encoder's), each None when off."""
        if self.config.attn_bias == "none" and self.config.rope == "none":
            return None, None
        pos = self._positions(batch_size, device)
        if slots is not None:
            pos = pos.gather(1, slots)
        bias = distance_bias(pos, self.config.grid, heads) if self.config.attn_bias == "distance" else None
        rope = rope_2d_rows(pos, self.config.grid, dim // heads) if self.config.rope == "2d" else None
        return bias, rope

    def forward_mae_encoder(self, tokens: torch.Tensor, mask: torch.Tensor,
                            class_embedding: torch.Tensor) -> torch.Tensor:
        """Known tokens (mask 0) plus the buffer, all buffer positions set to the class embedding ->
        encoder outputs (B, buffer + #known, D). Rows may know different numbers of tokens (a speculative
        sampler verifies several steps in one pass): shorter rows are padded, and no token attends to
        the padding; the outputs are then (B, buffer + most known, D), padding last in each row."""
        x = self.z_proj(tokens)
        b, _, d = x.shape
        buf = self.config.buffer_size
        x = torch.cat([class_embedding[:, None].expand(b, buf, d).to(x.dtype), x], dim=1)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        keep = ~self._with_buffer(mask)
        counts = keep.sum(1)
        slots = _kept_slots(keep)
        x = x.gather(1, slots[..., None].expand(-1, -1, d))
        ragged = bool((counts != counts[0]).any())
        bias, rope = self._position_terms(b, x.device, self.config.encoder_num_heads, d, slots)
        if ragged:
            padding = torch.arange(slots.shape[1], device=x.device)[None] >= counts[:, None]
            pad_bias = torch.zeros(padding.shape, dtype=x.dtype, device=x.device).masked_fill(padding, float("-inf"))
            bias = pad_bias[:, None, None] if bias is None else bias + pad_bias[:, None, None]
        for blk in self.encoder_blocks:
            x = blk(x, bias, rope)
        return self.encoder_norm(x)

    def forward_mae_decoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scatter the encoder outputs into a full sequence of mask tokens -> conditions (B, L, D)."""
        x = self.decoder_embed(x)
        masked = self._with_buffer(mask)
        full = self.mask_token.to(x.dtype).expand(masked.shape[0], masked.shape[1], -1).clone()
        known = ~masked
        counts = known.sum(1)
        valid = torch.arange(x.shape[1], device=x.device)[None] < counts[:, None]  # drops a ragged batch's padding
        full[known] = x[valid]
        x = full + self.decoder_pos_embed_learned
        bias, rope = self._position_terms(1, x.device, self.config.decoder_num_heads, x.shape[-1])
        for blk in self.decoder_blocks:
            x = blk(x, bias, rope)
        x = self.decoder_norm(x)[:, self.config.buffer_size :]
        return x + self.diffusion_pos_embed_learned

    def conditions(self, tokens: torch.Tensor, mask: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        """Per-token diffusion conditions z (B, L, D) given the known tokens (mask 0); rows may know
        different numbers of tokens."""
        if mask.shape != tokens.shape[:2]:
            raise ConfigError(f"mask {tuple(mask.shape)} must match tokens {tuple(tokens.shape[:2])}")
        return self.forward_mae_decoder(self.forward_mae_encoder(tokens, mask, class_embedding), mask)

    # -- training ----------------------------------------------------------------------------------------
    def random_orders(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A generation order per sample (B, L): random, or with probability ``raster_order_prob`` the
        reversed raster order, so that the masked first entries leave a raster prefix known (the
        sampler's order='raster' layout)."""
        dev = self.fake_latent.device
        orders = torch.stack([torch.randperm(self.seq_len, generator=generator, device=dev) for _ in range(batch_size)])
        if self.config.raster_order_prob > 0:
            raster = torch.rand(batch_size, generator=generator, device=dev) < self.config.raster_order_prob
            orders[raster] = torch.arange(self.seq_len - 1, -1, -1, device=dev)
        return orders

    def random_mask(self, orders: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training mask (B, L) float: the first ceil(L * r) positions of each order (at least one), one r
        per batch as the official, r on [mask_ratio_min, 1] from a normal(1, 0.25) truncated there
        ('truncnorm') or cos(pi/2 u), u uniform ('cosine')."""
        lo, n = self.config.mask_ratio_min, self.seq_len
        if self.config.mask_ratio_dist == "cosine":
            u_max = 2.0 / math.pi * math.acos(lo)  # cos(pi/2 u) >= lo
            r = math.cos(math.pi / 2 * u_max * float(torch.rand((), generator=generator)))
        else:
            while True:  # truncated normal by rejection
                r = 1.0 + 0.25 * float(torch.randn((), generator=generator))
                if lo <= r <= 1.0:
                    break
        k = max(1, int(math.ceil(n * r)))
        mask = torch.zeros(orders.shape, device=orders.device)
        return mask.scatter(1, orders[:, :k], 1.0)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss for tokens (B, L, C) of classes ``labels``: mask a random subset, predict
        conditions, diffusion loss on the masked tokens (each repeated ``diffusion_batch_mul`` times), plus
        the ``x0_loss_weight`` read-out loss."""
        b = tokens.shape[0]
        emb = self.class_emb(labels)
        if self.training and self.config.label_drop_prob > 0:
            drop = (torch.rand(b, device=tokens.device, generator=generator) < self.config.label_drop_prob)
            emb = torch.where(drop[:, None], self.fake_latent.to(emb.dtype), emb)
        mask = self.random_mask(self.random_orders(b, generator), generator)
        z = self.conditions(tokens, mask, emb)
        mul = self.config.diffusion_batch_mul
        target = tokens.reshape(b * self.seq_len, -1).repeat(mul, 1)
        loss = self.diffloss.loss(target, z.reshape(b * self.seq_len, -1).repeat(mul, 1), mask.reshape(-1).repeat(mul),
                                  generator=generator)
        if self.x0_head is None:
            return loss
        err = (self.x0_head(z) - tokens).pow(2).mean(-1)
        return loss + self.config.x0_loss_weight * (err * mask).sum() / mask.sum().clamp(min=1)
