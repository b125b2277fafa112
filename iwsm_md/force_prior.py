"""The part of the score that the energy gives: the force, scaled for the noise level.

With `TrainConfig.force_prior` the sampler's score is `s(x, t) = a(σ) F(x) + net(x, t)`, where
`F = −∇E` is the force of the (scaled) energy, clipped like the training targets
(`estimators.clip_score`: `target_clip`, per particle or whole, lifted below L with `clip_lift`),
and `a(σ) = L² / (L² + σ²)` with `L = well_width`, the width of the target's wells. For a
Gaussian well of standard deviation L the noised score is exactly `a(σ) F(x)`, so the network
is left with zero to learn; for real targets it learns only the correction, and at small σ,
where `a → 1` and the noised score tends to the force, the sampler's score is right whatever the
network's accuracy there. The training targets (Eq. 7)
are unchanged: the network is fitted so that the sum matches them.

A non-finite force is not masked: it makes that row's score non-finite, which the places that
use the score already count and report (a training step with a non-finite gradient is skipped
and counted in `n_skipped`; a diverged sample is kept and warned about by `Sampler.sample`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from iwsm_md.energies.base import Energy
from iwsm_md.estimators import clip_score
from iwsm_md.sde import GeometricVESDE, Space


class ForcePrior:
    """`a(σ(t)) · F(x)` for configurations `x` `(batch, dim)` and times `t` `(batch,)` ->
    `(batch, dim)`, in the units of `energy`'s coordinates (the sampler's scaled ones).

    Args:
        energy: E/kT of the coordinates the score works in.
        length: L, the well width in those coordinates (`TrainConfig.well_width`).
        clip: bound on the force's norm (per particle when `clip_per_particle` and `space`
            holds several particles), None: unclipped; `clip_lift`: k of `estimators.clip_bound`,
            with the well width L as its length.

    Differentiable in `x` when `x` requires grad (as the likelihoods' divergences need: the
    force is then built with `create_graph`); otherwise detached.
    """

    def __init__(self, energy: Energy, sde: GeometricVESDE, space: Space, length: float, clip: float | None,
                 clip_per_particle: bool, clip_lift: float | None = None):
        if not length > 0:
            raise ValueError(f"the force prior needs a positive well width L (well_width), got {length}")
        self.energy, self.sde, self.space = energy, sde, space
        self.length = float(length)
        self.clip_options = dict(clip=clip, clip_per_particle=clip_per_particle, clip_lift=clip_lift,
                                 clip_length=length)

    def weight(self, t: Tensor) -> Tensor:
        """a(σ(t)) = L² / (L² + σ(t)²), same shape as `t`."""
        return self.length**2 / (self.length**2 + self.sde.sigma(t) ** 2)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        ok = torch.isfinite(x).all(-1)
        if ok.all():
            force = self._force(x)
        else:  # a row with a non-finite position (a diverged sample) gets NaN
            force = torch.full(x.shape, math.nan, dtype=x.dtype, device=x.device)
            if ok.any():
                force[ok] = self._force(x[ok])
        force = clip_score(force, self.sde.sigma(t), self.space, **self.clip_options)
        return self.space.project(self.weight(t).to(force.dtype)[:, None] * force).to(x.dtype)

    def require_second_derivatives(self, x: Tensor) -> None:
        """ValueError naming the cause unless the force can be differentiated at `x` `(batch, dim)`:
        likelihoods through the prior need the energy's Hessian, which energies computed by
        once-differentiable kernels (OpenMM's fallback) do not give."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            try:
                torch.autograd.grad(self._force(xg).sum(), xg)
            except RuntimeError as err:
                raise ValueError(f"likelihoods with force_prior differentiate the force, and this energy "
                                 f"({type(self.energy).__name__}) has no second derivatives ({err}): sample "
                                 "without likelihoods, or train without force_prior") from None

    def _force(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            (grad,) = torch.autograd.grad(self.energy(x).sum(), x, create_graph=True)
            return -grad
        return self.energy.energy_and_forces(x.detach())[1]
