"""Gaussian diffusion (DDPM) schedules and the per-step Gaussian of the reverse process, with the
learned-range variance of Improved DDPM; the conventions of the ADM / DiT ``gaussian_diffusion.py``
that MAR's diffusion head uses (schedule arrays in float64, indexed then cast to float32).

    chain = GaussianDiffusion.cosine(1000).respaced(100)     # MAR's sampling chain
    mean, log_var, x0 = chain.p_mean_variance(model_out, x_t, t)   # t: respaced index
    chain.timestep_map[t]                                    # the original step the network sees

The reverse-step Gaussian is exposed as (mean, log variance) so that samplers can draw from it and
speculative samplers can evaluate its density.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from argen.errors import ConfigError


def cosine_betas(steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2(((t / T) + 0.008) / 1.008 * pi / 2)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)],
                    dtype=np.float64)


def linear_betas(steps: int) -> np.ndarray:
    """DDPM's linear schedule, scaled to ``steps`` as in ADM."""
    scale = 1000 / steps
    return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)


NOISE_SCHEDULES = {"cosine": cosine_betas, "linear": linear_betas}


def check_noise_schedule(name: str) -> None:
    if name not in NOISE_SCHEDULES:
        raise ConfigError(f"unknown noise_schedule {name!r}; known: {', '.join(NOISE_SCHEDULES)}")


def spaced_steps(steps: int, count: int) -> list[int]:
    """ADM's ``space_timesteps(steps, str(count))`` for one section: ``count`` evenly spaced original
    steps from 0 to steps - 1 (float stride accumulated and rounded, as the official code does)."""
    if not 1 <= count <= steps:
        raise ConfigError(f"diffusion sampling steps must lie in [1, {steps}], got {count}")
    if count == 1:
        return [0]
    stride = (steps - 1) / (count - 1)
    cur, out = 0.0, []
    for _ in range(count):
        out.append(round(cur))
        cur += stride
    return out


class GaussianDiffusion:
    """A (possibly respaced) DDPM chain; ``timestep_map[i]`` is the original step of chain index i."""

    def __init__(self, betas: np.ndarray, timestep_map: list[int] | None = None) -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ConfigError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = np.asarray(timestep_map if timestep_map is not None else range(len(betas)), dtype=np.int64)
        alphas = 1.0 - betas
        self.alphas_cumprod = ac = np.cumprod(alphas, axis=0)
        ac_prev = np.append(1.0, ac[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        self.posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        # the first posterior variance is 0: clip the log with the second one
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = np.log(np.append(pv[1], pv[1:])) if len(pv) > 1 else np.log(betas)
        self.posterior_mean_coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
        self.log_betas = np.log(betas)

    @classmethod
    def cosine(cls, steps: int = 1000) -> "GaussianDiffusion":
        return cls.from_schedule("cosine", steps)

    @classmethod
    def from_schedule(cls, schedule: str, steps: int = 1000) -> "GaussianDiffusion":
        """The chain of a named beta schedule: 'cosine' (MAR's) or 'linear' (DDPM / DiT's)."""
        check_noise_schedule(schedule)
        return cls(NOISE_SCHEDULES[schedule](steps))

    def respaced(self, count: int) -> "GaussianDiffusion":
        """The chain over ``count`` evenly spaced steps, betas recomputed from alpha_bar at them."""
        keep = spaced_steps(self.num_timesteps, count)
        last, betas = 1.0, []
        for i in keep:
            betas.append(1 - self.alphas_cumprod[i] / last)
            last = self.alphas_cumprod[i]
        return GaussianDiffusion(np.array(betas), [int(self.timestep_map[i]) for i in keep])

    @staticmethod
    def _at(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """arr[t] as float32 (indexed in float64, then cast: the official order), shaped to broadcast."""
        out = torch.from_numpy(arr).to(t.device)[t].float()
        return out.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Chain indices -> the original steps the network is conditioned on."""
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    def p_mean_variance(
        self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reverse-step Gaussian from the network output [eps ; v] (learned-range variance, no
        clipping): (mean, log_variance, predicted x_0)."""
        c = x_t.shape[-1] if x_t.dim() == 2 else x_t.shape[1]
        eps, v = model_out.split(c, dim=1)
        min_log = self._at(self.posterior_log_variance_clipped, t, x_t)
        max_log = self._at(self.log_betas, t, x_t)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        x0 = (self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
              - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, log_var, x0

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) with the given noise."""
        return (self._at(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_log_variance_clipped, t, x_t)

    def training_loss(self, model_out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                      noise: torch.Tensor) -> torch.Tensor:
        """Per-sample loss of Improved DDPM with a learned range: MSE on epsilon plus the variational
        bound term in bits, whose mean is taken from the detached epsilon (it trains only the variance)."""
        c = x0.shape[1]
        eps, v = model_out.split(c, dim=1)
        mse = (noise - eps).pow(2).flatten(1).mean(1)
        mean, log_var, _ = self.p_mean_variance(torch.cat([eps.detach(), v], dim=1), x_t, t)
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        kl = 0.5 * (-1.0 + log_var - true_log_var + torch.exp(true_log_var - log_var)
                    + (true_mean - mean).pow(2) * torch.exp(-log_var))
        kl = kl.flatten(1).mean(1) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).flatten(1).mean(1) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        return mse + vb


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor,
                                         log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] discretised to 256 bins under a Gaussian (ADM's decoder term)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding laid out [cos | sin], frequencies exp(-ln(max_period) * i / (dim / 2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb
