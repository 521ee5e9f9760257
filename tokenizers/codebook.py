"""Dead-code restarts for the vector quantisers (training only): codes that fall out of use are
re-seeded with latents of the current batch, so small codebooks stay in use."""
from __future__ import annotations

import torch
from torch import nn


class CodeRestarts(nn.Module):
    """Mixin for a quantiser with ``embedding`` (n_e, dim) and ``n_e``. Set ``dead_code_threshold``
    (a fraction of the uniform share; 0 = off), call :meth:`remember` in the training forward and
    :meth:`restart_dead_codes` after the optimiser step. Nothing here is in the config or checkpoint."""

    def _init_restarts(self, n_e: int) -> None:
        self.dead_code_threshold = 0.0
        self.register_buffer("usage", torch.ones(n_e) / n_e, persistent=False)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def init_buffers(self) -> None:
        self.usage = torch.ones(self.n_e, device=self.embedding.weight.device) / self.n_e

    def remember(self, latents: torch.Tensor, ids: torch.Tensor) -> None:
        """Keep this batch's latents (N, dim) and their code ids (N,) for the next restart."""
        if self.training and self.dead_code_threshold > 0:
            self._pending = (latents.detach(), ids.detach().flatten())

    @torch.no_grad()
    def restart_dead_codes(self) -> int:
        """Re-seed rarely used codes with random latents of the last training batch; returns how many."""
        if self._pending is None:
            return 0
        latents, ids = self._pending
        self._pending = None
        hits = torch.bincount(ids, minlength=self.n_e).float() / ids.numel()
        self.usage.mul_(0.95).add_(hits, alpha=0.05)
        dead = self.usage < self.dead_code_threshold / self.n_e
        if dead.any():
            pick = torch.randint(0, latents.shape[0], (int(dead.sum()),), device=latents.device)
            self.embedding.weight[dead] = latents[pick].to(self.embedding.weight.dtype)
            self.usage[dead] = 1.0 / self.n_e
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.embedding.weight.data, 0)
            torch.distributed.broadcast(self.usage, 0)
        return int(dead.sum())
