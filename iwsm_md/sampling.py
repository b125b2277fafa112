"""Samplers of the reverse-time VE-SDE and its probability-flow ODE, as short pure functions
over a score function `score(x, t) -> (batch, dim)`."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from iwsm_md.sde import GeometricVESDE, Space

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _times(steps: int, x: Tensor) -> Tensor:
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=x.dtype, device=x.device)


def reverse_sde(score: ScoreFn, sde: GeometricVESDE, space: Space, x: Tensor, steps: int,
                generator: torch.Generator | None = None) -> Tensor:
    """Euler–Maruyama integration of `dx = −g² s(x, t) dt + g dW̄` from t = 1 to t = 0.

    Args:
        x: `(batch, dim)` samples of the prior at t = 1 (see `GeometricVESDE.prior_sample`).
        steps: number of equal time steps.
    Returns `(batch, dim)` samples at t = 0 (no noise is added on the last step).
    """
    ts = _times(steps, x)
    for i in range(steps):
        t, dt = ts[i], ts[i] - ts[i + 1]
        tb = t.expand(x.shape[0])
        g2 = sde.g2(tb)[:, None]
        x = x + g2 * space.project(score(x, tb)) * dt
        if i < steps - 1:
            noise = space.noise(x.shape[0], dtype=x.dtype, device=x.device, generator=generator)
            x = x + torch.sqrt(g2 * dt) * noise
    return x


def probability_flow(score: ScoreFn, sde: GeometricVESDE, space: Space, x: Tensor, steps: int) -> Tensor:
    """Heun integration of the probability-flow ODE `dx/dt = −½ g² s(x, t)` from t = 1 to 0.

    `x`: `(batch, dim)` prior samples; returns `(batch, dim)` at t = 0.
    """
    ts = _times(steps, x)

    def drift(x, t):
        tb = t.expand(x.shape[0])
        return -0.5 * sde.g2(tb)[:, None] * space.project(score(x, tb))

    for i in range(steps):
        dt = ts[i + 1] - ts[i]
        d1 = drift(x, ts[i])
        x_euler = x + d1 * dt
        x = x + 0.5 * (d1 + drift(x_euler, ts[i + 1])) * dt
    return x
