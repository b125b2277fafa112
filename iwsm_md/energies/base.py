"""The `Energy` contract: flattened positions in, energies in kT out, differentiable.

An `Energy` is a `torch.nn.Module` whose `forward(x)` takes configurations of shape
`(batch, n_particles * spatial_dim)`, flattened particle-major, in the energy's own
length unit (`length_unit`: nm for OpenMM-born energies, Å for ASE-born ones), and returns
the reduced energy `E / kT` of shape `(batch,)`. Forces come from autograd; fast kernels
supply analytic gradients through `torch.autograd.Function`. Any floating dtype and device
work: parameters are cast to the input's dtype and device at call time.

Energies are built from *terms*: modules whose `forward(pos)` takes positions of shape
`(batch, n_particles, spatial_dim)` and returns `(batch,)` in kT. `TermEnergy` sums them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn


class Energy(nn.Module):
    """Base class of every energy.

    Subclasses implement `_energy(pos)` for `pos` of shape `(batch, n_particles, spatial_dim)`
    returning `(batch,)` in kT.

    Attributes:
        n_particles: number of particles (1 for a plain vector target such as a GMM).
        spatial_dim: coordinates per particle.
        dim: `n_particles * spatial_dim`, the length of one flattened configuration.
        length_unit: unit of the coordinates ("nm", "Å", or None for reduced units).
        translation_invariant: whether the energy is unchanged by a common shift of every
            particle (particle clusters); samplers then work centre-of-mass free.
    """

    def __init__(
        self,
        n_particles: int,
        spatial_dim: int,
        *,
        length_unit: str | None = None,
        translation_invariant: bool = False,
    ):
        super().__init__()
        if int(n_particles) < 1:
            raise ValueError(f"an Energy needs at least one particle, got n_particles={n_particles}")
        if int(spatial_dim) < 1:
            raise ValueError(f"spatial_dim must be positive, got {spatial_dim}")
        self.n_particles = int(n_particles)
        self.spatial_dim = int(spatial_dim)
        self.length_unit = length_unit
        self.translation_invariant = bool(translation_invariant)

    @property
    def dim(self) -> int:
        return self.n_particles * self.spatial_dim

    def forward(self, x: Tensor) -> Tensor:
        """Reduced energy E/kT of configurations `x` of shape `(batch, dim)`; returns `(batch,)`.

        Raises ValueError for a wrong shape, a non-floating dtype, or non-finite positions.
        """
        self.check_positions(x)
        return self._energy(x.reshape(x.shape[0], self.n_particles, self.spatial_dim))

    def energy(self, x: Tensor) -> Tensor:
        """Same as calling the module: `(batch, dim)` positions -> `(batch,)` energies in kT."""
        return self(x)

    def energy_and_forces(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Energies `(batch,)` in kT and forces `-dE/dx` `(batch, dim)` in kT per length unit.

        Both are detached from any graph. Raises like `forward` for bad positions.
        """
        self.check_positions(x)  # before requires_grad_, which fails obscurely on integer tensors
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            e = self(xg)
            (grad,) = torch.autograd.grad(e.sum(), xg)
        return e.detach(), -grad

    def check_positions(self, x: Tensor) -> None:
        """Raise ValueError unless `x` is a finite floating tensor of shape `(batch, dim)`."""
        if not isinstance(x, Tensor):
            raise TypeError(f"positions must be a torch.Tensor of shape (batch, {self.dim}), got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"positions must have shape (batch, {self.dim}) = (batch, n_particles*spatial_dim = "
                f"{self.n_particles}*{self.spatial_dim}), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"positions must be floating point, got dtype {x.dtype}")
        bad = ~torch.isfinite(x).all(dim=1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten()[:5].tolist()
            raise ValueError(
                f"positions contain NaN or inf in {int(bad.sum())} of {x.shape[0]} configurations "
                f"(first rows: {rows})"
            )

    def _energy(self, pos: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"n_particles={self.n_particles}, spatial_dim={self.spatial_dim}, length_unit={self.length_unit!r}"


class TermEnergy(Energy):
    """Sum of terms, each a module mapping `(batch, n_particles, spatial_dim)` to `(batch,)` kT."""

    def __init__(self, terms: Sequence[nn.Module], n_particles: int, spatial_dim: int, **kwargs):
        super().__init__(n_particles, spatial_dim, **kwargs)
        if len(terms) == 0:
            raise ValueError("an energy needs at least one term")
        self.terms = nn.ModuleList(terms)

    def _energy(self, pos: Tensor) -> Tensor:
        total = self.terms[0](pos)
        for term in self.terms[1:]:
            total = total + term(pos)
        return total


class FunctionEnergy(Energy):
    """An energy given as a plain torch function `fn(x) -> E/kT` of flattened positions."""

    def __init__(self, fn: Callable[[Tensor], Tensor], n_particles: int, spatial_dim: int, **kwargs):
        super().__init__(n_particles, spatial_dim, **kwargs)
        self.fn = fn

    def _energy(self, pos: Tensor) -> Tensor:
        e = self.fn(pos.reshape(pos.shape[0], -1))
        if e.shape != (pos.shape[0],):
            raise ValueError(f"energy function returned shape {tuple(e.shape)}, expected ({pos.shape[0]},)")
        return e


def from_function(
    fn: Callable[[Tensor], Tensor],
    dim: int | None = None,
    *,
    n_particles: int | None = None,
    spatial_dim: int | None = None,
    translation_invariant: bool = False,
) -> Energy:
    """Wrap a differentiable torch function `fn(x) -> E/kT` as an `Energy`.

    Args:
        fn: maps `(batch, dim)` positions to `(batch,)` reduced energies (already divided by kT).
        dim: length of one configuration for a plain vector target (then `n_particles = 1`).
        n_particles, spatial_dim: give these instead of `dim` for a particle system.
        translation_invariant: whether `fn` is unchanged by shifting every particle.
    """
    if dim is not None and (n_particles is not None or spatial_dim is not None):
        raise ValueError("give either dim or (n_particles, spatial_dim), not both")
    if dim is not None:
        n_particles, spatial_dim = 1, dim
    if n_particles is None or spatial_dim is None:
        raise ValueError("from_function needs dim, or n_particles and spatial_dim")
    return FunctionEnergy(fn, n_particles, spatial_dim, translation_invariant=translation_invariant)


class ScaledEnergy(Energy):
    """The energy of `base` in rescaled coordinates: `E_y(y) = E(factor · y)`.

    Samplers of wide targets (the GMMs) work in `y = x / factor`; positions `(batch, dim)`
    in units of `factor` × the base length unit, energies `(batch,)` in kT.
    """

    def __init__(self, base: Energy, factor: float):
        if not factor > 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        super().__init__(base.n_particles, base.spatial_dim, length_unit=base.length_unit,
                         translation_invariant=base.translation_invariant)
        self.base = base
        self.factor = float(factor)

    def _energy(self, pos: Tensor) -> Tensor:
        return self.base._energy(pos * self.factor)
