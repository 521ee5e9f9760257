"""What the distilled students (LlamaGen-DD, VAR-DD) share beyond their teachers: the continuous output
layer and the released step lists."""
from __future__ import annotations

import torch
from torch import nn

from argen.errors import ConfigError
from argen.nn.linear import Linear


class ContinuousHead(nn.Module):
    """The official ``final_layer_conti`` (PixArt's final layer): linear(LN(h) * (1 + scale) + shift), with
    (shift, scale) = the rows of ``scale_shift_table`` + the class embedding; LayerNorm without affine
    parameters, eps 1e-6. It gives each position its continuous token next to the teacher's logits."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.linear = Linear(dim, out_dim)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """h (B, L, dim), the class embedding cond (B, dim) -> (B, L, out_dim)."""
        shift, scale = (self.scale_shift_table.unsqueeze(0) + cond.unsqueeze(1)).chunk(2, dim=1)
        return self.linear(self.norm(h) * (1 + scale) + shift)


def released_t_list(steps: int, two_step_t: int, num_t: int) -> list[int]:
    """The step positions of a released 1- or 2-step run: [0], or [0, two_step_t] (the clean prefix the
    second pass restarts from: LlamaGen-DD 80 of 256 tokens, VAR-DD scale 5 or 4 of 10)."""
    if steps == 1:
        return [0]
    if steps == 2:
        if not 0 < two_step_t < num_t:
            raise ConfigError(f"two_step_t {two_step_t} does not fit a model with {num_t} step positions; "
                              "set it in the config or pass a t_list")
        return [0, two_step_t]
    raise ConfigError(f"the released DD settings are for 1 or 2 steps, got {steps}; pass a t_list instead")


# a student's parts its teacher lacks: zero at the start, so that they add nothing to the teacher's network
NEW_PARTS = ("n_d_embed.", "final_layer_conti.", "layerwise_n_d_embed.")


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module, derived: dict[str, torch.Tensor]) -> None:
    """Load ``student`` from ``teacher``: every teacher tensor of the same name and shape, the student's new
    parts (:data:`NEW_PARTS`) at zero, and ``derived``, the tensors its family computes from the teacher
    (grown tables, a fitted embedding). ConfigError naming any trained tensor left without a value."""
    src = {k: v.detach().float().cpu() for k, v in teacher.state_dict().items()}
    state = student.state_dict()
    params = {k for k, _ in student.named_parameters()}
    new = {k: torch.zeros_like(v) for k, v in state.items() if k.startswith(NEW_PARTS)}
    new.update({k: src[k] for k, v in state.items() if k not in new and k in src and src[k].shape == v.shape})
    new.update(derived)
    missing = sorted(k for k in params if k not in new)
    if missing:
        raise ConfigError(f"cannot initialise {', '.join(missing)} of the student from the teacher")
    student.load_state_dict({**state, **{k: v.to(state[k].dtype) for k, v in new.items()}})
