"""Flow-matching ODE integration, in the convention of FlowAR (and diffusers' FlowMatch schedulers):
the path x_t = (1 - t) x_0 + t eps runs from data (t = 0) to noise (t = 1), the network predicts
v = dx/dt = eps - x_0, and sampling integrates from t = 1 down to t = 0.

    times = flowar_time_grid(25)                       # float64, 1 -> 0 (24 Euler steps)
    x0 = euler_integrate(velocity, noise, times)       # velocity(x, t) -> v; x is float64

The state and the step arithmetic are float64, as in the official FlowAR ``euler_sampler``; the
velocity function casts to the network's dtype itself. A ``guidance`` hook replaces the plain call
at every step (classifier-free guidance over a time interval is one such hook).

Why not diffusers' ``FlowMatchEulerDiscreteScheduler``: its step ``x + (sigma_next - sigma) v`` is the
same Euler update and custom ``sigmas`` express FlowAR's grid, but it keeps the sigmas and the state in
float32 (``step`` casts the sample to float32), while the official sampler uses float64 times and a
float64 state. With the same network the state round-off alone is small (about 4e-6 on the FlowAR
fixture), but the guidance interval is decided on the times, and float32 times flip that decision at
common thresholds (50 steps with guidance 0.8, 0.6 or 0.4, any grid with 0.3): one step guided or
not moved the fixture's samples by 0.23. ``tests/test_flowar.py`` keeps that comparison.
"""
from __future__ import annotations

from typing import Callable

import torch

from argen.errors import ConfigError

# velocity(x, t) -> v: x the float64 state (N, ...), t the current time as a Python float
VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
# guidance(velocity, x, t) -> the velocity to step with (called instead of velocity(x, t))
GuidanceFn = Callable[[VelocityFn, torch.Tensor, float], torch.Tensor]
# on_step(i, t_cur, t_next, x_next) after every Euler step
StepFn = Callable[[int, float, float, torch.Tensor], None]


def linear_time_grid(num_steps: int) -> torch.Tensor:
    """``num_steps`` equal Euler steps from t = 1 (noise) to t = 0 (data): num_steps + 1 float64 times."""
    _check_steps(num_steps, 1)
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)


def flowar_time_grid(num_steps: int) -> torch.Tensor:
    """The official FlowAR grid (``models/sampler.py``): 50 gives 50 equal steps; any other n gives
    linspace(1, 0.3, n // 2) ++ linspace(0.25, 0, n // 2 + 1), i.e. n - 1 steps for odd n (25 -> 24
    steps with a jump from 0.3 to 0.25). The network is never evaluated at t = 0."""
    _check_steps(num_steps, 2)
    if num_steps == 50:
        return linear_time_grid(50)
    half = num_steps // 2
    return torch.cat([torch.linspace(1.0, 0.3, half, dtype=torch.float64),
                      torch.linspace(0.25, 0.0, half + 1, dtype=torch.float64)])


def _check_steps(num_steps: int, minimum: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < minimum:
        raise ConfigError(f"the number of flow steps must be an integer >= {minimum}, got {num_steps!r}")


def euler_integrate(
    velocity: VelocityFn,
    x: torch.Tensor,
    times: torch.Tensor | list[float],
    *,
    guidance: GuidanceFn | None = None,
    on_step: StepFn | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) with explicit Euler steps over ``times`` (decreasing from noise to
    data): x <- x + (t_next - t_cur) v(x, t_cur). Returns the float64 state at ``times[-1]``."""
    ts = [float(t) for t in times]
    if len(ts) < 2:
        raise ConfigError("a flow time grid needs at least two times")
    x = x.to(torch.float64)
    for i, (t_cur, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        v = velocity(x, t_cur) if guidance is None else guidance(velocity, x, t_cur)
        x = x + (t_next - t_cur) * v.to(torch.float64)
        if on_step is not None:
            on_step(i, t_cur, t_next, x)
    return x
