"""Linear layers tuned for decode steps on the CPU."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_TRANSPOSED_ROWS = 256


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W^T (+ b). For 2..256 rows (decode steps, VAR's scales) on the CPU, MKL's sgemm is
    1.4-2.6x (2..64 rows) and 1.1-1.2x (64..256 rows) faster as W @ x^T with a contiguous x than as
    F.linear's x @ W^T (benchmarks/bench_ar.py, bench_var.py); the result is a transposed view
    holding the same values."""
    rows = x.numel() // x.shape[-1]
    if (1 < rows <= MAX_TRANSPOSED_ROWS and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32):
        x2 = x.reshape(rows, x.shape[-1]).contiguous()
        y = torch.mm(weight, x2.t()) if bias is None else torch.addmm(bias.unsqueeze(1), weight, x2.t())
        return y.t().view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) whose forward uses :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class Conv1D(nn.Module):
    """GPT-2's linear layer (image-GPT's checkpoints): weight stored (in, out), y = x W + b. On the CPU,
    ``addmm(b, x, W)`` is the fast product from 2 rows on (:func:`linear` on the transposed view: 3.6-43x
    slower at 2-4 rows, a guided step or a short window; 1.1-2.1x at 16-32), a matrix-vector product the
    fast one for a single row (``python benchmarks/bench_conv1d.py``)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == x.shape[-1]:  # one row: a plain AR step
            return F.linear(x, self.weight.t(), self.bias)
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return out.view(*x.shape[:-1], self.weight.shape[1])
