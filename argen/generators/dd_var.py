"""VAR-DD: the Distilled Decoding student of VAR (DD, arXiv 2412.17153; ``microsoft/distilled_decoding``,
``VAR/models/dd.py``, class ``DD_Model``). The teacher VAR plus deltas only:

* one extra 1x1 start scale before the real ones: position 0 holds the class (start) token, positions
  1..N the N token vectors of the real scales, so the position / level tables and the mask cover N + 1;
* a new mask: a token sees the tokens of strictly coarser scales and its own input, not the other tokens of
  its scale;
* a noise/data embedding (``n_d_embed``, row 1 for clean positions, row 0 for noisy ones) added to the input,
  and per layer (``layerwise_n_d_embed``) projected and added between attention and FFN, plus once more
  before both heads;
* a continuous head (``final_layer_conti``) next to the teacher's logits head: position j predicts token j
  (the token whose noise sits there), not the next one.

The student maps Gaussian noise in the VQ-VAE's embedding space (one vector per token) to the whole token
sequence in one pass; a few-step run restarts from a clean prefix (DistilledGenerator protocol):

    dd = DDVAR(DDVARConfig.preset("dd-var-d16")).bind_tokenizer(vae)   # or argen.convert.dd_var.load_dd_var
    x = noise                                                           # (B, 680, 32)
    for t in dd.default_t_list(2):
        tt = torch.full((B,), float(t))
        tokens, logits = dd.final_predict(dd.perturb(x, tt, noise), labels, tt)
        x = dd.final_sequence(tokens, logits, dd.default_split)
    images = decode_scale_tokens(dd.tokenizer, x)                       # [-1, 1]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from argen.errors import ConfigError
from argen.generators.distilled import ContinuousHead, released_t_list
from argen.generators.var import VAR, VARConfig
from argen.modeling import build_config, register
from argen.nn import Linear

# build_vae_dd: depth D, width 64 * D, D heads, shared_aln False, attn_l2_norm True, V 4096, Cvae 32, the ten
# 256px scales; the README's sampling settings: t_list "0,5" / "0,4" and loss_split_t 5 / 4
DD_PRESETS: dict[str, dict[str, Any]] = {
    "dd-var-d16": dict(depth=16, two_step_t=5, loss_split_t=5),
    "dd-var-d20": dict(depth=20, two_step_t=4, loss_split_t=4),
    "dd-var-d24": dict(depth=24, two_step_t=4, loss_split_t=4),
}


@dataclass
class DDVARConfig(VARConfig):
    """The official ``DD_Model`` arguments (those of :class:`VARConfig`; ``patch_nums`` are the real scales,
    the student prepends its start scale itself) plus the released sampling settings: ``two_step_t``, the
    second step of a 2-step run (t_list [0, two_step_t]), and ``loss_split_t``, the scale before which
    :meth:`DDVAR.final_sequence` snaps tokens to the codebook."""

    two_step_t: int = 5
    loss_split_t: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.patch_nums)
        if not 0 < self.two_step_t < n:
            raise ConfigError(f"two_step_t must lie in 1..{n - 1} (the scales after the first), got {self.two_step_t}")
        if not 0 <= self.loss_split_t <= n:
            raise ConfigError(f"loss_split_t must lie in 0..{n} (a scale boundary), got {self.loss_split_t}")

    @classmethod
    def preset(cls, name: str | None, **overrides: Any) -> "DDVARConfig":
        return build_config(cls, DD_PRESETS, name, overrides, "VAR-DD")


@register("dd-var")
class DDVAR(VAR):
    """VAR-DD student (kind "distilled"). ``forward(x, labels, t)``: one pass on noisy tokens; the
    DistilledGenerator methods (``perturb``, ``final_predict``, ``final_sequence``, ...) drive few-step
    sampling. Step positions ``t`` count real scales: tokens of scales < t are clean, the rest noise. Needs its
    VQ-VAE bound (``bind_tokenizer``) for the codebook."""

    config_class = DDVARConfig
    kind = "distilled"
    sampling_conventions: dict[str, str] = {}

    def __init__(self, config: DDVARConfig) -> None:
        super().__init__(config)
        C = config.embed_dim
        self.n_d_embed = nn.Embedding(2, C)
        self.layerwise_n_d_embed = nn.ModuleList(Linear(C, C) for _ in range(config.depth + 1))
        self.final_layer_conti = ContinuousHead(C, config.Cvae)

    def table_scales(self) -> list[int]:
        return [1, *self.config.patch_nums]

    @staticmethod
    def attention_bias(levels: torch.Tensor) -> torch.Tensor:
        """Strictly coarser scales plus the token itself (level 0 = the start token)."""
        d = levels.view(1, -1, 1)
        n = levels.shape[1]
        bias = torch.where(d > d.transpose(1, 2), 0.0, -torch.inf)
        return bias.diagonal_scatter(torch.zeros(1, n), dim1=1, dim2=2).reshape(1, 1, n, n)

    # -- DistilledGenerator protocol ---------------------------------------------------------------
    @property
    def token_dim(self) -> int:
        return self.config.Cvae

    @property
    def num_t(self) -> int:
        return len(self.config.patch_nums)

    @property
    def default_split(self) -> int:
        return self.config.loss_split_t

    def default_t_list(self, steps: int) -> list[int]:
        return released_t_list(steps, self.config.two_step_t, self.num_t)

    def token_starts(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(num_t + 1,) int64: the number of tokens in the real scales < k, for k = 0 .. num_t."""
        sizes = torch.tensor([0] + [p * p for p in self.config.patch_nums], device=device)
        return sizes.cumsum(0)

    def _t_index(self, t: torch.Tensor | float, batch_size: int, device: torch.device) -> torch.Tensor:
        """Step positions (B,) (float as the official scripts pass them, or int; a scalar for all rows) ->
        int64 on ``device``; ConfigError unless whole numbers in 0 .. num_t - 1."""
        t = torch.as_tensor(t, device=device)
        if t.dim() == 0:
            t = t.expand(batch_size)
        if t.shape != (batch_size,):
            raise ConfigError(f"t must be a scalar or ({batch_size},), got {tuple(t.shape)}")
        idx = t.long()
        if t.is_floating_point() and not torch.equal(idx.to(t.dtype), t):
            raise ConfigError(f"t must hold whole scale indices, got {t.tolist()}")
        if bool(((idx < 0) | (idx >= self.num_t)).any()):
            raise ConfigError(f"t must lie in 0..{self.num_t - 1}, got {idx.tolist()}")
        return idx

    def first_noisy(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        idx = self._t_index(t, t.numel() if t.dim() else 1, t.device)
        return self.token_starts(idx.device)[idx]

    def _noisy_mask(self, t: torch.Tensor, batch_size: int, n: int, device: torch.device) -> torch.Tensor:
        """(B, n) True at the positions from first_noisy(t) on."""
        first = self.token_starts(device)[self._t_index(t, batch_size, device)]
        return torch.arange(n, device=device).unsqueeze(0) >= first.unsqueeze(1)

    def perturb(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self._check_tokens(x)
        if noise.shape != x.shape:
            raise ConfigError(f"noise must have the shape of x {tuple(x.shape)}, got {tuple(noise.shape)}")
        noisy = self._noisy_mask(t, x.shape[0], x.shape[1], x.device)
        return torch.where(noisy.unsqueeze(-1), noise, x)

    def nearest_codes(self, x: torch.Tensor) -> torch.Tensor:
        """(..., Cvae) -> (...) ids of the nearest codebook vectors: argmin of the sum of squared differences
        on the raw VQ-VAE codebook (as the official ``final_predict``), in chunks of bounded memory."""
        book = self.code_vectors
        flat = x.reshape(-1, x.shape[-1]).to(book.dtype)
        rows = max(1, 2**24 // book.numel())
        ids = [(part.unsqueeze(1) - book).square().sum(-1).argmin(-1) for part in flat.split(rows)]
        return torch.cat(ids).view(x.shape[:-1]) if ids else flat.new_zeros(x.shape[:-1], dtype=torch.long)

    def final_predict(self, x_t: torch.Tensor, labels: torch.Tensor,
                      t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, logits = self(x_t, labels, t)
        clean = ~self._noisy_mask(t, x_t.shape[0], x_t.shape[1], x_t.device)
        n = int(clean.sum(1).max())  # the nearest codes are needed up to the longest clean prefix only
        one_hot = torch.full_like(logits[:, :n], -torch.inf)
        one_hot.scatter_(-1, self.nearest_codes(x_t[:, :n]).unsqueeze(-1), 0.0)
        head = torch.where(clean[:, :n].unsqueeze(-1), one_hot, logits[:, :n])
        tokens = torch.where(clean.unsqueeze(-1), x_t.to(tokens.dtype), tokens)
        return tokens, torch.cat([head, logits[:, n:]], dim=1)

    def final_sequence(self, tokens: torch.Tensor, logits: torch.Tensor, split: int) -> torch.Tensor:
        if not 0 <= int(split) <= self.num_t:
            raise ConfigError(f"split must lie in 0..{self.num_t}, got {split}")
        n = int(self.token_starts()[int(split)])
        snapped = self.code_vectors[logits[:, :n].argmax(-1)].to(tokens.dtype)
        return torch.cat([snapped, tokens[:, n:]], dim=1)

    # -- the student pass ---------------------------------------------------------------------------
    def _check_tokens(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[1:] != (self.seq_len, self.config.Cvae):
            raise ConfigError(f"tokens must be (B, {self.seq_len}, {self.config.Cvae}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, labels: torch.Tensor,
                t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Token vectors x (B, N, Cvae) (noise from ``first_noisy(t)`` on), class ids (B,), step positions t
        (B,) (float or int, one per row; a scalar for all) -> (continuous tokens (B, N, Cvae), logits
        (B, N, V)), position j predicting token j. No class dropout (the official sampler runs none)."""
        self._check_tokens(x)
        b = x.shape[0]
        labels = self.check_condition(labels)
        if labels.shape != (b,):
            raise ConfigError(f"labels must be ({b},) for x of batch {b}, got {tuple(labels.shape)}")
        cnd = self.condition(labels)
        # clean (row 1): the start token and the tokens of scales < t; noisy (row 0): the rest
        nd = (~self._noisy_mask(t, b, self.seq_len, x.device)).long()
        nd = torch.cat([nd.new_ones(b, 1), nd], dim=1)
        sos = cnd.emb.unsqueeze(1) + self.pos_start
        h = torch.cat([sos, self.word_embed(x.float())], dim=1)
        h = h + (self.lvl_embed(self.lvl_1L.expand(b, -1)) + self.pos_1LC)
        h = h + self.n_d_embed(nd)
        table = self.n_d_embed.weight
        mask = self.attn_bias_for_masking.to(h.dtype)
        for i, blk in enumerate(self.blocks):
            h = blk(h, cnd.blocks[i], mask, mid=self.layerwise_n_d_embed[i](table)[nd])
        h = (h + self.layerwise_n_d_embed[-1](table)[nd])[:, 1:]
        return self.final_layer_conti(h, cnd.emb), self._logits(h, cnd)


def scale_tokens_to_fhat(tokenizer, tokens: torch.Tensor) -> torch.Tensor:
    """Continuous token vectors (B, N, Cvae) of all real scales (scale-major, row-major) -> the accumulated
    latent f_hat (B, Cvae, pn, pn) of the last scale, as VAR inference builds it (each scale bicubically
    upsampled and passed through its Phi, the last without upsampling); the vectors are not quantised."""
    quant = tokenizer.quantize
    b, n, c = tokens.shape
    sizes = [p * p for p in quant.patch_nums]
    if n != sum(sizes):
        raise ConfigError(f"tokens must be (B, {sum(sizes)}, C) for scales {quant.patch_nums}, "
                          f"got {tuple(tokens.shape)}")
    f_hat = None
    for si, (part, pn) in enumerate(zip(tokens.split(sizes, dim=1), quant.patch_nums)):
        contrib = quant.upsample_scale(part.transpose(1, 2).reshape(b, c, pn, pn), si)
        f_hat = contrib if f_hat is None else f_hat + contrib
    return f_hat


def decode_scale_tokens(tokenizer, tokens: torch.Tensor) -> torch.Tensor:
    """A VAR-DD run's final tokens (B, N, Cvae) -> images (B, 3, H, W) in [-1, 1] (the official
    ``transfer_BLCv_to_B3HW`` before its mapping to [0, 1])."""
    return tokenizer.decode_latents(scale_tokens_to_fhat(tokenizer, tokens))
