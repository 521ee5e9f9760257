"""Two-sample tests for samplers of continuous tokens, and a toy MAR whose last reverse step is wide.

A trained MAR's head ends its chain with a step of std ~0.01 against tokens spread ~1, so what a broken
speculative sampler gets wrong lives at 1% of the tokens' spread: out of reach of any two-sample test at
10^4 samples. :class:`ToyMAR` keeps the MAR protocol (masks, random orders, per-token conditions from
the known tokens, a guided Gaussian reverse chain) with a last step as wide as the others and a sharp
dependence on the context, so the same tests see every mistake the negative controls make.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

P_FAIL = 1e-4  # a sampler fails when a KS p-value is below this
P_FAIL_MMD = 1e-3  # or when the MMD permutation p-value is (2000 permutations resolve 5e-4)


class ToyMAR(torch.nn.Module):
    """4 tokens of 2 channels, 3 classes. A token's condition is its class, its position and a sharp
    function (tanh(3 x)) of the known tokens, mixed per position; the head's reverse steps are
    Gaussians mean = a_i x_t + (1 - a_i) f(z), std s_i (z-dependent), guidance on f."""

    kind = "continuous"
    sampling_conventions: dict[str, str] = {"cfg_schedule": "linear"}

    def __init__(self, seed: int = 0, shift: float = 0.0, steps: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.seq_len, self.token_dim, self.num_classes = 4, 2, 3
        self.token_grid = self.latent_grid = (2, 2)
        self.sampling_steps = steps
        d = 8
        self.register_buffer("emb", torch.randn(self.num_classes + 1, d, generator=g))  # last row: no class
        self.register_buffer("pos", torch.randn(self.seq_len, d, generator=g))
        self.register_buffer("mix", 1.5 * torch.randn(self.seq_len, self.seq_len, generator=g))
        self.register_buffer("ctx", torch.randn(self.token_dim, d, generator=g))
        w_f = torch.randn(d, self.token_dim, generator=g) / math.sqrt(d)
        # a draft is the same toy with its mean map shifted: a different model that agrees often
        other = torch.Generator().manual_seed(99)
        self.register_buffer("w_f", w_f + shift * torch.randn(d, self.token_dim, generator=other))
        self.register_buffer("w_v", 0.3 * torch.randn(d, self.token_dim, generator=g))
        self.a = [0.3, 0.5, 0.7, 0.8, 0.85, 0.9][:steps]
        self.s = [0.35, 0.5, 0.6, 0.6, 0.6, 0.6][:steps]
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def check_condition(self, cond, allow_null: bool = False) -> torch.Tensor:
        return torch.as_tensor(cond, dtype=torch.long)

    def class_embedding(self, labels, batch_size=None) -> torch.Tensor:
        if labels is None:
            return self.emb[-1].expand(batch_size, -1)
        return self.emb[labels]

    def random_orders(self, batch_size: int, generator=None) -> torch.Tensor:
        return torch.stack([torch.randperm(self.seq_len, generator=generator) for _ in range(batch_size)])

    def conditions(self, tokens: torch.Tensor, mask: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        known = torch.tanh(3.0 * tokens) * (~mask.bool())[..., None]
        ctx = torch.einsum("lk,bkc->blc", self.mix, known) @ self.ctx
        return class_embedding[:, None] + self.pos[None] + ctx

    def _f(self, z: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
        f, v = z @ self.w_f, 0.5 * torch.tanh(z @ self.w_v)
        if cfg is None:
            return f, v
        n = z.shape[0] // 2
        scale = cfg.reshape(-1, 1) if torch.is_tensor(cfg) else cfg
        return f[n:] + scale * (f[:n] - f[n:]), v[:n]

    def step_gaussian(self, x_t, i, z, cfg, steps):
        f, v = self._f(z, cfg)
        return self.a[i] * x_t + (1 - self.a[i]) * f, 2 * math.log(self.s[i]) + v

    def sample_tokens(self, z, temperature, cfg, generator, steps, final_noise=False):
        n = z.shape[0] if cfg is None else z.shape[0] // 2
        x = torch.randn(n, self.token_dim, generator=generator)
        for i in reversed(range(steps)):
            mean, log_var = self.step_gaussian(x, i, z, cfg, steps)
            x = mean + (torch.exp(0.5 * log_var) * torch.randn(x.shape, generator=generator) * temperature
                        if i > 0 or final_noise else 0.0)
        return x


def ks_pvalue(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (asymptotic Kolmogorov distribution) of 1-D samples."""
    n, m = a.numel(), b.numel()
    both = torch.cat([a, b]).double()
    order = torch.argsort(both, stable=True)
    steps = torch.cat([torch.full((n,), 1.0 / n), torch.full((m,), -1.0 / m)]).double()[order]
    d = float(steps.cumsum(0).abs().max())
    lam = (math.sqrt(n * m / (n + m)) + 0.12 + 0.11 / math.sqrt(n * m / (n + m))) * d
    if lam < 0.2:
        return 1.0
    return max(0.0, min(1.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))))


def mmd_pvalue(x: torch.Tensor, y: torch.Tensor, features: int = 256, permutations: int = 2000, seed: int = 0) -> float:
    """Permutation p-value of the MMD between samples x (N, D) and y (M, D) with a Gaussian kernel
    (median-distance bandwidth) in random Fourier features: linear in N, so 10^4-10^5 samples a side fit."""
    g = torch.Generator().manual_seed(seed)
    pooled = torch.cat([x, y]).double()
    pooled = (pooled - pooled.mean(0)) / pooled.std(0).clamp(min=1e-12)
    sub = pooled[torch.randperm(pooled.shape[0], generator=g)[:1000]]
    bandwidth = float(torch.cdist(sub, sub).median())
    w = torch.randn(pooled.shape[1], features, generator=g, dtype=torch.float64) / bandwidth
    b = 2 * math.pi * torch.rand(features, generator=g, dtype=torch.float64)
    phi = torch.cos(pooled @ w + b)
    n = x.shape[0]
    labels = torch.cat([torch.full((n,), 1.0 / n), torch.full((y.shape[0],), -1.0 / y.shape[0])]).double()
    stat = float((labels @ phi).pow(2).sum())
    above = 0
    for start in range(0, permutations, 250):
        perms = torch.stack([labels[torch.randperm(labels.numel(), generator=g)]
                             for _ in range(min(250, permutations - start))])
        above += int(((perms @ phi).pow(2).sum(1) >= stat).sum())
    return (1 + above) / (1 + permutations)


@dataclass
class TwoSample:
    p_mmd: float
    p_ks: float  # the smallest per-coordinate KS p-value

    @property
    def passed(self) -> bool:
        return self.p_mmd >= P_FAIL_MMD and self.p_ks >= P_FAIL

    def __str__(self) -> str:
        return f"MMD p {self.p_mmd:.2g}, smallest per-coordinate KS p {self.p_ks:.2g}"


def two_sample(x: torch.Tensor, y: torch.Tensor) -> TwoSample:
    """Samples (N, L, C) against (M, L, C): joint MMD and per-coordinate KS."""
    xf, yf = x.flatten(1), y.flatten(1)
    p_ks = min(ks_pvalue(xf[:, k], yf[:, k]) for k in range(xf.shape[1]))
    return TwoSample(mmd_pvalue(xf, yf), p_ks)
