"""MAR's per-token diffusion head (``DiffLoss``): a small AdaLN MLP that predicts the noise and the
variance interpolation of each continuous token given the transformer's per-token condition z.

Key names follow the official ``models/diffloss.py`` (``diffloss.net.time_embed.mlp.0``,
``res_blocks.i.adaLN_modulation.1``, ``final_layer.linear`` ...). The head exposes each reverse step's
Gaussian (:meth:`DiffusionHead.step_gaussian`), so samplers draw from it and speculative samplers can
evaluate its density without touching the network.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from argen.nn.diffusion import GaussianDiffusion, timestep_embedding
from argen.nn.linear import Linear


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(Linear(freq_dim, width), nn.SiLU(), Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # the sinusoids are computed in float32; the MLP may run in another dtype (bf16 on a GPU, float64 in tests)
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(Linear(width, width), nn.SiLU(), Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """(x_t, original timestep t, condition c) -> [eps ; v], 2 * in_channels outputs."""

    def __init__(self, in_channels: int, width: int, cond_channels: int, depth: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = Linear(cond_channels, width)
        self.input_proj = Linear(in_channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * in_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
                         cfg_scale: float | torch.Tensor) -> torch.Tensor:
        """The official CFG call: rows [cond ; uncond] share the first half's x; both halves get the
        guided eps uncond + cfg (cond - uncond); each keeps its own variance channels. ``cfg_scale``:
        one scale, or one per row pair (N,) (rows at different steps of a schedule)."""
        half = x[: len(x) // 2]
        out = self(torch.cat([half, half]), t, c)
        eps, rest = out[:, : self.in_channels], out[:, self.in_channels :]
        cond_eps, uncond_eps = eps.chunk(2, dim=0)
        if torch.is_tensor(cfg_scale):
            cfg_scale = cfg_scale.reshape(-1, 1).to(eps.dtype)
        guided = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)

    def init_weights(self) -> None:
        """The official initialisation: xavier linears, N(0, 0.02) time MLP, zero AdaLN and output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for block in self.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)


@lru_cache(maxsize=8)
def _chain(steps: int, sampling_steps: int, schedule: str) -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule(schedule, steps).respaced(sampling_steps)


class DiffusionHead(nn.Module):
    """The official ``diffloss`` module: ``net`` plus the 1000-step chain (training) and its respaced
    sampling chains. The official schedule is cosine; 'linear' is an argen option for small models, whose
    epsilon error the cosine chain's first reverse step multiplies by several hundred (its alpha_bar at
    t = 999 is 2e-9)."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int, sampling_steps: int = 100,
                 train_steps: int = 1000, noise_schedule: str = "cosine") -> None:
        super().__init__()
        self.in_channels = token_dim
        self.net = SimpleMLPAdaLN(token_dim, width, cond_dim, depth)
        self.train_steps, self.sampling_steps, self.noise_schedule = train_steps, sampling_steps, noise_schedule
        self.train_diffusion = GaussianDiffusion.from_schedule(noise_schedule, train_steps)

    def chain(self, sampling_steps: int | None = None) -> GaussianDiffusion:
        return _chain(self.train_steps, sampling_steps or self.sampling_steps, self.noise_schedule)

    def loss(self, target: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Diffusion loss of tokens ``target`` (N, C) given conditions ``z`` (N, D); ``mask`` (N,)
        weights the tokens (MAR: only the masked ones count)."""
        t = torch.randint(0, self.train_steps, (target.shape[0],), device=target.device, generator=generator)
        noise = torch.randn(target.shape, device=target.device, generator=generator, dtype=target.dtype)
        x_t = self.train_diffusion.q_sample(target, t, noise)
        per = self.train_diffusion.training_loss(self.net(x_t, t, z), target, x_t, t, noise)
        if mask is None:
            return per.mean()
        return (per * mask).sum() / mask.sum().clamp(min=1)

    def step_gaussian(self, x_t: torch.Tensor, i: int, z: torch.Tensor, cfg: float | torch.Tensor | None,
                      chain: GaussianDiffusion) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance of reverse step ``i`` (chain index) for tokens x_t (N, C).
        ``cfg`` None: z (N, D) is conditional only; else z is [cond ; uncond] (2N, D), eps is guided
        (one scale, or one per token (N,)) and the variance is the conditional branch's (the official
        forward_with_cfg, first half)."""
        n = x_t.shape[0]
        t = torch.full((n if cfg is None else 2 * n,), i, dtype=torch.long, device=x_t.device)
        mt = chain.model_timesteps(t)
        if cfg is None:
            out = self.net(x_t, mt, z)
        else:
            out = self.net.forward_with_cfg(torch.cat([x_t, x_t]), mt, z, cfg)[:n]
        mean, log_var, _ = chain.p_mean_variance(out, x_t, t[:n])
        return mean, log_var

    def sample(self, z: torch.Tensor, temperature: float = 1.0, cfg: float | torch.Tensor | None = None,
               generator: torch.Generator | None = None, sampling_steps: int | None = None,
               final_noise: bool = False) -> torch.Tensor:
        """Draw one token per condition: the reverse chain from N(0, I) (temperature scales the
        noise injected at each step, not the start). ``cfg``: z is [cond ; uncond] (2N, D).
        ``final_noise``: the last step draws from its Gaussian too; the official (False) takes its mean,
        so a token is then no draw of a density a speculative sampler could evaluate."""
        chain = self.chain(sampling_steps)
        n = z.shape[0] if cfg is None else z.shape[0] // 2
        x = torch.randn(n, self.in_channels, device=z.device, dtype=z.dtype, generator=generator)
        for i in reversed(range(chain.num_timesteps)):
            mean, log_var = self.step_gaussian(x, i, z, cfg, chain)
            if i > 0 or final_noise:
                noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
                x = mean + torch.exp(0.5 * log_var) * noise * temperature
            else:
                x = mean
        return x
