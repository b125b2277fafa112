"""Monte Carlo estimates of the noised target: its score (Eq. 7) and density, and the
self-normalised importance weights of IWSM (Eqs. 9–12).

For `x_t` at noise level σ, K noisy copies `x^(k) = x_t + σ ε_k` give
`p̂_t(x_t) = (1/Z) mean_k exp(−E(x^(k)))` and the score estimate
`ŝ(x_t) = Σ_k softmax(−E(x^(k)))_k · (−∇E(x^(k)))`, from the same K energy evaluations.
The same weights also give Tweedie's estimate `Σ_k softmax_k · ε_k / σ`; both have the true
score as their limit, Eq. 7 with low variance at small σ, Tweedie's at large σ. With a
`blend_length` L the estimate is `a ŝ_Eq7 + (1 − a) ŝ_Tweedie` with `a = L² / (L² + σ²)`, which
is exact with zero variance for a Gaussian target of standard deviation L and, for targets
made of wells of width about L (GMM modes), cuts the variance by orders of magnitude at
large σ (GMM-40, K = 100, σ = 1 in the rescaled space: standard deviation 0.41
against 104 for Eq. 7 alone; benchmarks/results/estimator_variance.md).
The proposal density of `x_t` is the Gaussian mixture over the mini-batch's buffer samples,
`p̂_B,t(x_t) = mean_j N(x_t; x_0^(j), σ² I)`; the IWSM weight is `p̂_t / p̂_B,t`, normalised
in log space (the unknown Z cancels). Non-finite energies are masked and counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from iwsm_md.energies.base import Energy
from iwsm_md.sde import Space


@dataclass
class TargetEstimate:
    """MC estimate of the noised target at a batch of points.

    score: `(B, dim)` estimate of ∇ log p_t(x_t) (zero where `valid` is False).
    log_p: `(B,)` log p̂_t(x_t) + log Z (−inf where `valid` is False).
    valid: `(B,)` bool, at least one of the K copies had a finite energy.
    n_nonfinite: number of non-finite energies among the B·K copies (masked out).
    inner_ess: `(B,)` effective sample size of the K softmax weights, in [1, K].
    """

    score: Tensor
    log_p: Tensor
    valid: Tensor
    n_nonfinite: int
    inner_ess: Tensor


def clip_norm(v: Tensor, max_norm: float | Tensor, space: Space, per_particle: bool) -> Tensor:
    """Scale vectors `(B, dim)` down to norm ≤ `max_norm` (a number, or one per row `(B,)`), per
    particle or per whole vector."""
    shape = v.shape
    parts = v.reshape(shape[0], space.n_particles, space.spatial_dim) if per_particle else v
    if isinstance(max_norm, Tensor):
        max_norm = max_norm.to(v.dtype).reshape(-1, *([1] * (parts.dim() - 1)))
    norm = parts.norm(dim=-1, keepdim=True)
    factor = torch.clamp(max_norm / norm.clamp_min(torch.finfo(v.dtype).tiny), max=1.0)
    return (parts * factor).reshape(shape)


def clip_bound(clip: float, sigma: Tensor, lift: float | None = None, length: float | None = None) -> float | Tensor:
    """The bound on a score's norm at noise levels `sigma` `(B,)`: `clip`, or with a lift k and a
    well width L the `(B,)` bounds `max(clip, k / √(L² + σ²))`, at most `max(clip, k / L)`.

    The clip tames the estimate where noise dominates (σ ≳ L); below L the noised score tends to
    the force of the well, which a fixed bound cuts wherever the force exceeds it, biasing the
    samples hot (benchmarks/results/clip_share.md). For a Gaussian well of width L in d
    dimensions the noised score's norm times √(L² + σ²) is χ_d-distributed, so a k of a few
    units (4 covers 99.9% in 2D) leaves the typical set's scores whole at every σ."""
    if lift is None:
        return clip
    return torch.clamp(lift / torch.sqrt(length**2 + sigma * sigma), min=clip)


def clip_score(v: Tensor, sigma: Tensor, space: Space, clip: float | None, clip_per_particle: bool = True,
               clip_lift: float | None = None, clip_length: float | None = None) -> Tensor:
    """Scores `v` `(B, dim)` at noise levels `sigma` `(B,)` clipped to `clip_bound` (per particle
    when `clip_per_particle` and `space` holds several particles); `v` itself when `clip` is None."""
    if clip is None:
        return v
    bound = clip_bound(clip, sigma, clip_lift, clip_length)
    return clip_norm(v, bound, space, clip_per_particle and space.n_particles > 1)


def estimate_target(
    energy: Energy,
    x_t: Tensor,
    sigma: Tensor,
    n_mc: int,
    space: Space,
    *,
    clip: float | None = None,
    clip_per_particle: bool = True,
    clip_lift: float | None = None,
    clip_length: float | None = None,
    blend_length: float | None = None,
    max_evaluations: int = 1 << 17,
    generator: torch.Generator | None = None,
    rows: slice | None = None,
) -> TargetEstimate:
    """Eq. 7 score and density estimates at `x_t` `(B, dim)` with noise levels `sigma` `(B,)`.

    Args:
        energy: the target's reduced energy E/kT.
        n_mc: K, noisy copies per point.
        space: sample space (centre-of-mass-free noise for particle systems).
        clip: optional bound on the norm of the score estimate, per particle when
            `clip_per_particle` and the space is a particle system, else of the whole vector;
            applied before the projection onto the space (which does not increase the norm).
        clip_lift, clip_length: k and L; when given, the bound rises to k/√(L² + σ²) where that
            is larger (`clip_bound`).
        blend_length: L, the width of the target's wells in the units of `x_t`; when given, the
            score blends Eq. 7 with Tweedie's estimate (see the module docstring); None: Eq. 7.
        max_evaluations: energy evaluations per chunk (bounds memory).
        rows: estimate only these rows of `x_t` (a process's share of a batch) and return theirs;
            the copies' noise is still drawn for every row, so that `generator` advances as for
            the whole batch and the rows' estimates equal those of the whole batch's.
    """
    b, dim = x_t.shape
    first, last = (0, b) if rows is None else rows.indices(b)[:2]
    per_chunk = max(1, max_evaluations // n_mc)
    scores, log_ps, valids, esss, n_bad = [], [], [], [], 0
    for start in range(0, b, per_chunk):
        eps = space.noise(min(per_chunk, b - start), n_mc, dtype=x_t.dtype, device=x_t.device, generator=generator)
        lo, hi = max(start, first), min(start + per_chunk, last)  # the chunk's rows that are wanted
        if lo >= hi:
            continue
        xc, sc, eps = x_t[lo:hi], sigma[lo:hi], eps[lo - start:hi - start]
        m = xc.shape[0]
        copies = (xc[:, None, :] + sc[:, None, None] * eps).reshape(m * n_mc, dim)
        e, f = energy.energy_and_forces(copies)
        log_w = (-e.double()).reshape(m, n_mc)
        finite = torch.isfinite(log_w) & torch.isfinite(f).all(-1).reshape(m, n_mc)
        n_bad += int((~finite).sum())
        log_w = torch.where(finite, log_w, -math.inf)
        f = torch.where(finite.reshape(-1, 1), f, 0.0).reshape(m, n_mc, dim)
        log_norm = torch.logsumexp(log_w, dim=1)
        valid = torch.isfinite(log_norm)
        w = torch.where(valid[:, None], torch.exp(log_w - log_norm[:, None]), 0.0)
        score = torch.einsum("mk,mkd->md", w.to(f.dtype), f)
        if blend_length is not None:
            tweedie = torch.einsum("mk,mkd->md", w.to(eps.dtype), eps) / sc[:, None]
            a = (blend_length**2 / (blend_length**2 + sc * sc))[:, None]
            score = a * score + (1 - a) * tweedie.to(score.dtype)
        scores.append(score)
        log_ps.append(torch.where(valid, log_norm - math.log(n_mc), -math.inf))
        valids.append(valid)
        esss.append(torch.where(valid, 1.0 / (w * w).sum(1).clamp_min(1.0 / n_mc), 0.0))
    score = clip_score(torch.cat(scores), sigma[first:last], space, clip, clip_per_particle, clip_lift, clip_length)
    return TargetEstimate(space.project(score), torch.cat(log_ps), torch.cat(valids), n_bad, torch.cat(esss))


def proposal_log_density(x_t: Tensor, x0: Tensor, sigma: Tensor, space: Space) -> Tensor:
    """log p̂_B,t(x_t) = log mean_j N(x_t; x0_j, σ² I) over the effective dimensions.

    Args:
        x_t: `(B, dim)` noised points; x0: `(M, dim)` the mini-batch's buffer samples;
        sigma: `(B,)` the noise level of each point.
    Returns `(B,)` float64.
    """
    x_t, x0, sigma = x_t.double(), x0.double(), sigma.double()
    d2 = torch.cdist(x_t, x0).pow(2)  # (B, M)
    d = space.effective_dim
    log_norm = -0.5 * d * torch.log(2 * math.pi * sigma**2)
    return torch.logsumexp(-d2 / (2 * sigma[:, None] ** 2), dim=1) - math.log(x0.shape[0]) + log_norm


@dataclass
class ImportanceWeights:
    """Self-normalised IWSM weights `(B,)` with mean 1 within each normalisation group, and
    their effective sample size as a fraction of the group size (mean over groups)."""

    weights: Tensor
    ess_fraction: float


def snis_weights(log_p: Tensor, log_q: Tensor, group_size: int | None = None, power: float = 1.0
                 ) -> ImportanceWeights:
    """Normalise `w ∝ exp(β (log_p − log_q))` in log space.

    Args:
        log_p: `(B,)` log p̂_t(x_t) (−inf marks an invalid point: weight 0).
        log_q: `(B,)` log p̂_B,t(x_t).
        group_size: n of "SNIS-n" — rows come in consecutive groups of n noisy copies of one
            (x_0, t) and are normalised within their group; None normalises over the batch.
        power: β, the tempering exponent: 1 gives the importance weights, 0 equal weights on the
            valid points (iDEM's); between trades the weights' bias for their variance.
    """
    log_w = power * (log_p.double() - log_q.double())
    log_w = torch.where(torch.isfinite(log_w), log_w, -math.inf)
    b = log_w.shape[0]
    n = b if group_size is None else group_size
    if b % n:
        raise ValueError(f"batch of {b} is not a whole number of SNIS groups of {n}")
    groups = log_w.reshape(b // n, n)
    norm = torch.logsumexp(groups, dim=1, keepdim=True)
    w = torch.where(torch.isfinite(norm), torch.exp(groups - norm), 0.0)
    ess = torch.where(torch.isfinite(norm[:, 0]), 1.0 / (w * w).sum(1).clamp_min(1e-300), 0.0) / n
    return ImportanceWeights((w * n).reshape(b).to(log_p.dtype), float(ess.mean()))
