"""What the distilled students (LlamaGen-DD, VAR-DD) share beyond their teachers: the released step lists."""
from __future__ import annotations

from argen.errors import ConfigError


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
