"""Samplers of the reverse-time VE-SDE and its probability-flow ODE, and likelihoods through
that ODE, as short pure functions over a score function `score(x, t) -> (batch, dim)`.

Likelihoods (`log_prob`, `sample_with_log_prob`) use the instantaneous change of variables
along the probability-flow ODE `dx/dt = f(x, t) = −½ g(t)² s(x, t)`:

    log q_0(x_0) = log p_1(x_1) + ∫_0^1 div f(x_t, t) dt,

with the prior `p_1 = N(0, σ_max² I)` over the space's `effective_dim` degrees of freedom. For
centre-of-mass-free particle systems every density is a density on the COM-free subspace, with
respect to the Lebesgue measure of that subspace in orthonormal coordinates (dimension
`dim − spatial_dim`), and the divergence is the trace of the drift's Jacobian restricted to it.
Units: x in the coordinates the score works in (for a `Sampler` with `config.scale != 1`, the
scaled ones: `Sampler.log_prob` converts). Divergence: "exact" (one backward pass per effective
degree of freedom: small systems) or "hutchinson" (unbiased, one backward pass per probe).
"""
from __future__ import annotations

import math
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
    drift = _pf_drift(score, sde, space)
    for i in range(steps):
        dt = ts[i + 1] - ts[i]
        d1 = drift(x, ts[i])
        x_euler = x + d1 * dt
        x = x + 0.5 * (d1 + drift(x_euler, ts[i + 1])) * dt
    return x


def _pf_drift(score: ScoreFn, sde: GeometricVESDE, space: Space) -> Callable[[Tensor, Tensor], Tensor]:
    """The probability-flow drift `f(x, t) = −½ g(t)² P s(x, t)` (P: projection onto the space)."""

    def drift(x, t):
        tb = t.expand(x.shape[0])
        return -0.5 * sde.g2(tb)[:, None] * space.project(score(x, tb))

    return drift


DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


def space_basis(space: Space, dtype=torch.float32, device=None) -> Tensor:
    """Orthonormal basis of the space, `(effective_dim, dim)` rows: the identity, or for a
    centre-of-mass-free space the Helmert contrasts of the particles ⊗ the spatial axes."""
    if not space.com_free:
        return torch.eye(space.dim, dtype=dtype, device=device)
    n = space.n_particles
    helmert = torch.zeros(n - 1, n, dtype=torch.float64)
    for j in range(1, n):  # row j−1: (1, …, 1, −j, 0, …) / √(j(j+1)), orthogonal to (1, …, 1)
        helmert[j - 1, :j] = 1.0
        helmert[j - 1, j] = -float(j)
        helmert[j - 1] /= math.sqrt(j * (j + 1))
    eye = torch.eye(space.spatial_dim, dtype=torch.float64)
    return torch.kron(helmert, eye).to(dtype=dtype, device=device)


def prior_log_prob(sde: GeometricVESDE, space: Space, x: Tensor) -> Tensor:
    """Log density `(batch,)` of the prior N(0, σ_max² I) at `x` `(batch, dim)`, over the
    space's `effective_dim` dimensions (COM-free: the density on the subspace; x is projected
    onto it first). Units: log of 1/(length unit of x)^effective_dim."""
    x = space.project(x)
    var = sde.sigma_max**2
    return -0.5 * (x * x).sum(-1) / var - 0.5 * space.effective_dim * math.log(2.0 * math.pi * var)


def _check_likelihood_args(space: Space, x: Tensor, steps: int, divergence: str, n_probes: int, probe: str) -> None:
    if x.ndim != 2 or x.shape[1] != space.dim:
        raise ValueError(f"x must have shape (batch, {space.dim}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got dtype {x.dtype}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def _divergence_vectors(space: Space, x: Tensor, divergence: str, n_probes: int, probe: str,
                        generator: torch.Generator | None) -> Callable[[], Tensor]:
    """A function returning vectors v_k `(k, batch or 1, dim)` at each drift evaluation:
    the space's orthonormal basis (exact: `div f = Σ_k v_kᵀ J v_k`), or fresh Hutchinson probes
    (`E[vᵀ J v] = div f`)."""
    if divergence == "exact":
        basis = space_basis(space, x.dtype, x.device)[:, None, :]
        return lambda: basis
    shape = (n_probes, x.shape[0], space.dim)

    def probes():
        if probe == "gaussian":
            v = torch.randn(*shape, dtype=x.dtype, device=x.device, generator=generator)
        else:
            v = torch.randint(0, 2, shape, device=x.device, generator=generator).to(x.dtype) * 2 - 1
        return space.project(v)  # covariance P, so E[vᵀ J v] = tr(J P): the divergence on the subspace

    return probes


def _flow_with_divergence(score: ScoreFn, sde: GeometricVESDE, space: Space, x: Tensor, ts: Tensor,
                          vectors: Callable[[], Tensor], average: bool) -> tuple[Tensor, Tensor]:
    """Heun integration of the probability-flow ODE along the grid `ts` (either direction), and
    of `∫_{ts[0]}^{ts[-1]} div f(x_t, t) dt` with the same (trapezoidal) steps, the divergence
    being the sum (exact: `vectors` an orthonormal basis) or the mean (`average`: Hutchinson
    probes) of `vᵀ J v`. Returns `(x at ts[-1], integral (batch,))`, both detached."""
    drift = _pf_drift(score, sde, space)

    def f_and_div(x, t):
        vs = vectors()
        n_vec = vs.shape[0]
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = drift(xg, t)
            if not out.requires_grad:
                raise ValueError("the score function returned a tensor without a graph: likelihoods need a "
                                 "differentiable score (not one evaluated under torch.no_grad, such as "
                                 "Sampler.score_fn(); pass the network itself)")
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for k in range(n_vec):
                v = vs[k].expand_as(out)
                (vjp,) = torch.autograd.grad(out, xg, v, retain_graph=k < n_vec - 1, allow_unused=True)
                if vjp is not None:  # None: the drift does not depend on x (divergence 0)
                    div = div + (vjp * v).sum(-1)
        return out.detach(), div / n_vec if average else div

    integral = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(len(ts) - 1):
        dt = ts[i + 1] - ts[i]
        d1, div1 = f_and_div(x, ts[i])
        x_euler = x + d1 * dt
        d2, div2 = f_and_div(x_euler, ts[i + 1])
        x = x + 0.5 * (d1 + d2) * dt
        integral = integral + 0.5 * (div1 + div2) * dt
    return x, integral


def log_prob(score: ScoreFn, sde: GeometricVESDE, space: Space, x: Tensor, steps: int, *,
             divergence: str = "exact", n_probes: int = 1, probe: str = "rademacher",
             generator: torch.Generator | None = None) -> Tensor:
    """Log density `(batch,)` of the probability-flow ODE's distribution at `x` `(batch, dim)`.

    Integrates the ODE (Heun, the time grid of `probability_flow` reversed) from t = 0 at `x`
    to t = 1, accumulating `∫_0^1 div f dt` with the same steps, and returns
    `log p_1(x_1) + ∫_0^1 div f dt` with the prior `p_1 = N(0, σ_max² I)` (`prior_log_prob`).

    Args:
        score: `score(x, t)`, differentiable in x (not evaluated under `torch.no_grad`).
        x: `(batch, dim)` points in the score's coordinates (COM-free spaces: projected first).
        steps: Heun steps; the error is O(1/steps²) (a few hundred are plenty for smooth
            scores; stiff learned scores near t = 0 may need more: compare two step counts).
        divergence: "exact": trace of the Jacobian over an orthonormal basis of the space
            (`effective_dim` backward passes per drift evaluation: small systems);
            "hutchinson": unbiased estimate `mean_k v_kᵀ J v_k` with `n_probes` probes in the
            space (`n_probes` backward passes), fresh at every drift evaluation: the errors of
            the 2·steps evaluations average out (probes kept along the trajectory, as adaptive
            solvers need, add up coherently: ~10× the standard deviation at 100 steps).
        probe: Hutchinson probes, "rademacher" (±1, projected: lower variance) or "gaussian".
        generator: random numbers of the probes.
    Returns `(batch,)` log densities in log 1/(length unit of x)^effective_dim (the density on
    the COM-free subspace for particle systems); NaN where the integration diverged.
    """
    _check_likelihood_args(space, x, steps, divergence, n_probes, probe)
    x = space.project(x.detach())
    vectors = _divergence_vectors(space, x, divergence, n_probes, probe, generator)
    x1, integral = _flow_with_divergence(score, sde, space, x, _times(steps, x).flip(0), vectors,
                                         average=divergence == "hutchinson")
    return prior_log_prob(sde, space, x1) + integral


def sample_with_log_prob(score: ScoreFn, sde: GeometricVESDE, space: Space, x: Tensor, steps: int, *,
                         divergence: str = "exact", n_probes: int = 1, probe: str = "rademacher",
                         generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """`probability_flow` with the log density of what it returns, in one integration.

    From prior samples `x` `(batch, dim)` at t = 1, integrates the ODE to t = 0 (the same Heun
    steps and grid as `probability_flow`, so the same samples) and returns `(x_0 (batch, dim),
    log q(x_0) (batch,))` with `log q(x_0) = log p_1(x_1) + ∫_0^1 div f dt`. Arguments,
    divergence estimators and units as in `log_prob`; the two agree to O(1/steps²).
    """
    _check_likelihood_args(space, x, steps, divergence, n_probes, probe)
    x = x.detach()
    vectors = _divergence_vectors(space, x, divergence, n_probes, probe, generator)
    x0, integral = _flow_with_divergence(score, sde, space, x, _times(steps, x), vectors,
                                         average=divergence == "hutchinson")
    return x0, prior_log_prob(sde, space, x) - integral  # the integral ran from t = 1 to 0
