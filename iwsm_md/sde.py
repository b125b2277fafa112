"""The variance-exploding SDE `dx = g(t) dW` with a geometric noise schedule, and
centre-of-mass-free Gaussian noise for particle systems.

`σ(t) = σ_min (σ_max/σ_min)^t`, `x_t = x_0 + σ(t) ε`, `g(t)² = dσ²/dt = 2 σ(t)² log(σ_max/σ_min)`.
For translation-invariant particle systems every sample and every noise vector lives in the
centre-of-mass-free subspace (dimension `dim − spatial_dim`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def remove_com(x: Tensor, n_particles: int, spatial_dim: int) -> Tensor:
    """Subtract each configuration's centre of mass (equal masses): `(batch, n*d)` -> same."""
    pos = x.reshape(x.shape[0], n_particles, spatial_dim)
    return (pos - pos.mean(dim=1, keepdim=True)).reshape(x.shape)


@dataclass(frozen=True)
class Space:
    """The space samples live in: flattened `(batch, dim)` vectors, centre-of-mass free when
    `com_free` (particle systems with a translation-invariant energy)."""

    n_particles: int
    spatial_dim: int
    com_free: bool

    @property
    def dim(self) -> int:
        return self.n_particles * self.spatial_dim

    @property
    def effective_dim(self) -> int:
        """Degrees of freedom: `dim`, less `spatial_dim` when centre-of-mass free."""
        return self.dim - self.spatial_dim if self.com_free else self.dim

    @classmethod
    def of(cls, energy) -> "Space":
        """The space of an `Energy`: centre-of-mass free iff translation invariant with > 1 particle."""
        return cls(energy.n_particles, energy.spatial_dim, bool(energy.translation_invariant and energy.n_particles > 1))

    def project(self, x: Tensor) -> Tensor:
        """Project `(..., dim)` onto the space (remove the centre of mass when com_free)."""
        if not self.com_free:
            return x
        shape = x.shape
        return remove_com(x.reshape(-1, self.dim), self.n_particles, self.spatial_dim).reshape(shape)

    def noise(self, *shape: int, dtype=torch.float32, device=None, generator: torch.Generator | None = None) -> Tensor:
        """Standard Gaussian noise `(*shape, dim)` in the space (unit variance per effective dof)."""
        eps = torch.randn(*shape, self.dim, dtype=dtype, device=device, generator=generator)
        return self.project(eps)


@dataclass(frozen=True)
class GeometricVESDE:
    """VE-SDE with `σ(t) = σ_min (σ_max/σ_min)^t` for t in [0, 1]."""

    sigma_min: float
    sigma_max: float

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max) or not math.isfinite(self.sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {self.sigma_min}, {self.sigma_max}")

    @property
    def log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: Tensor) -> Tensor:
        """Noise level σ(t), same shape as `t`."""
        return self.sigma_min * torch.exp(t * self.log_ratio)

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient g(t)² = dσ²/dt, same shape as `t`."""
        return 2.0 * self.sigma(t) ** 2 * self.log_ratio

    def perturb(self, x0: Tensor, t: Tensor, space: Space, generator: torch.Generator | None = None) -> Tensor:
        """`x_t = x_0 + σ(t) ε` for `x0` `(batch, dim)` and `t` `(batch,)`."""
        eps = space.noise(x0.shape[0], dtype=x0.dtype, device=x0.device, generator=generator)
        return x0 + self.sigma(t)[:, None] * eps

    def prior_sample(self, n: int, space: Space, dtype=torch.float32, device=None,
                     generator: torch.Generator | None = None) -> Tensor:
        """Samples `(n, dim)` of the prior N(0, σ_max² I) (in the centre-of-mass-free space when needed)."""
        return self.sigma_max * space.noise(n, dtype=dtype, device=device, generator=generator)
