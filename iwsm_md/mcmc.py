"""Reference sampling by MCMC and MD: the samples a trained sampler is judged against.

* `metropolis(energy, x0, n_steps, step_size)`: batched random-walk Metropolis, moving the whole
  configuration or (`single_particle=True`) one particle at a time, one *sweep* being
  `n_particles` single-particle moves.
* `mala(energy, x0, n_steps, step_size)`: batched Metropolis-adjusted Langevin.
* Both take `temperatures=[1, T_2, ...]` for parallel tempering (replicas at E/T, neighbour
  swaps) and return only the T = 1 chains.
* `langevin_openmm(system, temperature, n_samples)`: Langevin MD of an OpenMM `System`.
* `sample_reference(energy, n_samples)`: burn-in, pilot run, then thinning by the measured
  energy autocorrelation time until it holds `n_samples` samples.
* Diagnostics: `integrated_autocorrelation` (Sokal's automatic window), `effective_sample_size`,
  `equilibration_time` (burn-in to discard), `thin`.

Conventions. Configurations are `(batch, dim)` flattened particle-major, in the energy's length
unit (nm for OpenMM-born energies); energies are reduced, E/kT. Every chain advances in one
batched energy call (no Python loop over chains). Step sizes are in the length unit: the
standard deviation of the proposal per coordinate (for MALA, of its noise; the drift is
`step_size²/2 · F/T`). They are adapted during burn-in toward `target_acceptance` (Robbins-Monro
on log step size, one step size per temperature) and frozen afterwards, so the recorded chains
are exact Markov chains. Translation-invariant particle energies are sampled centre-of-mass
free: proposals are projected onto the COM-free subspace (`iwsm_md.sde.Space`) and the returned
samples have zero centre of mass. A proposal whose energy (or, for MALA, force) is NaN or
infinite is rejected, never accepted, and counted in `MCMCResult.n_nonfinite`.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from iwsm_md.energies.base import Energy, TermEnergy
from iwsm_md.energies.pair import PairTerm
from iwsm_md.sde import Space

__all__ = [
    "MCMCResult",
    "metropolis",
    "mala",
    "sample_reference",
    "langevin_openmm",
    "langevin_integrator",
    "integrated_autocorrelation",
    "effective_sample_size",
    "equilibration_time",
    "thin",
]


# ---------------------------------------------------------------------------------------------
# result


@dataclass
class MCMCResult:
    """Samples of one MCMC or MD run, with its diagnostics.

    Attributes:
        samples: `(n, dim)` configurations at T = 1 in the energy's length unit, ordered
            time-major (all chains at one recorded step, then the next step).
        energies: `(n,)` their reduced energies E/kT.
        acceptance: mean acceptance rate at T = 1 after burn-in (NaN for MD).
        autocorrelation_time: integrated autocorrelation time of the energy, in steps (sweeps for
            single-particle Metropolis, integrator steps for MD), measured after burn-in.
        n_effective: effective number of independent samples among `samples`,
            `min(n, chains · steps spanned / autocorrelation_time)`.
        step_size: the frozen T = 1 step size (length unit; MD: the timestep in ps).
        wall_seconds: wall-clock time of the whole run, burn-in included.
        energy_trace: `(n_steps, chains)` T = 1 energies (kT) at every step after burn-in
            (MD: at every recorded sample).
        thin: steps between recorded samples.
        burn_in: steps discarded (and used to adapt the step size).
        n_proposals, n_nonfinite: proposals made at every temperature after burn-in, and how
            many of them (burn-in included) had a non-finite energy or force and were rejected.
        step_sizes: the frozen step size of each temperature.
        temperatures: the ladder, in units of the energy's kT (first is 1).
        swap_acceptance: acceptance of swaps between neighbours k, k+1 (parallel tempering).
        state: `(n_temperatures, chains, dim)` final configurations of every replica, to continue.
        method: "metropolis", "metropolis-single", "mala" or "langevin-openmm".
    """

    samples: Tensor
    energies: Tensor
    acceptance: float
    autocorrelation_time: float
    n_effective: float
    step_size: float
    wall_seconds: float
    energy_trace: Tensor | None = None
    thin: int = 1
    burn_in: int = 0
    n_proposals: int = 0
    n_nonfinite: int = 0
    step_sizes: tuple[float, ...] = ()
    temperatures: tuple[float, ...] = (1.0,)
    swap_acceptance: tuple[float, ...] = ()
    state: Tensor | None = field(default=None, repr=False)
    method: str = ""

    @property
    def chains(self) -> int:
        return 0 if self.energy_trace is None else int(self.energy_trace.shape[1])


# ---------------------------------------------------------------------------------------------
# autocorrelation diagnostics


def _as_trace(series) -> np.ndarray:
    a = series.detach().cpu().double().numpy() if isinstance(series, Tensor) else np.asarray(series, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"series must have shape (n_steps,) or (n_steps, chains), got {a.shape}")
    return a


def _mean_acf(a: np.ndarray, centre: str) -> np.ndarray | None:
    """Autocorrelation function `(n_steps,)` of the chains (columns) of `a`, averaged over the
    chains that vary: "chain" centres each chain on its own mean and averages the normalised
    ACFs; "global" centres on the grand mean and averages the autocovariances, so spread between
    the chains' means counts as correlation longer than the trace."""
    n = a.shape[0]
    if centre not in ("chain", "global"):
        raise ValueError(f"centre must be 'chain' or 'global', got {centre!r}")
    x = a - (a.mean(axis=0, keepdims=True) if centre == "chain" else a.mean())
    var = (x * x).mean(axis=0)
    ok = var > 1e-300 * np.maximum(1.0, np.abs(a).max(axis=0)) ** 2
    if not ok.any():
        return None
    x = x[:, ok]
    size = 1 << int(2 * n - 1).bit_length()
    f = np.fft.rfft(x, n=size, axis=0)
    acov = np.fft.irfft(f * np.conj(f), n=size, axis=0)[:n] / n
    if centre == "chain":
        return (acov / acov[0]).mean(axis=1)
    acov = acov.mean(axis=1)
    return acov / acov[0]


def integrated_autocorrelation(series, c: float = 5.0, centre: str = "global") -> float:
    """Integrated autocorrelation time of a scalar trace, with Sokal's automatic window.

    Args:
        series: `(n_steps,)` or `(n_steps, chains)` numpy array or tensor (e.g. the energy of
            every chain at every step).
        c: window constant: the window is the smallest M with `M >= c · τ(M)`.
        centre: "global" (default): every chain is centred on the grand mean of all chains, its
            autocovariance computed by FFT (biased estimator), and the autocovariances averaged
            over the chains: the spread of the chain means counts as correlation, as it should
            for chains that all sample the target. "chain": each chain centred on its own mean,
            normalised ACFs averaged; this hides correlations longer than the trace (measured on
            LJ-13 energies: 107 vs 136 sweeps for single-particle Metropolis over 6000 sweeps,
            450 vs 833 steps for MALA over 12000 steps; batch means give 142 and 881).
    Returns:
        τ in steps: `1 + 2 Σ_{t=1}^{M} ρ(t)`. τ = 1 for independent samples; `inf` when every
        chain is constant (stuck). Reliable for `n_steps ≳ 50 τ`; traces shorter than 20 τ warn
        (τ is then underestimated). Chains stuck in different modes give a large τ under
        "global" centring and look well mixed under "chain" centring.
    """
    a = _as_trace(series)
    if a.shape[0] < 2:
        raise ValueError("need at least 2 steps to estimate an autocorrelation time")
    rho = _mean_acf(a, centre)
    if rho is None:
        return math.inf
    taus = 2.0 * np.cumsum(rho) - 1.0
    window = np.flatnonzero(np.arange(len(taus)) >= c * taus)
    tau = float(max(taus[window[0]] if window.size else taus[-1], 1e-12))
    if a.shape[0] < 20 * tau:
        warnings.warn(f"trace of {a.shape[0]} steps is too short for an autocorrelation time of {tau:.3g} "
                      "steps (want >= 20 τ): τ is likely underestimated", RuntimeWarning, stacklevel=2)
    return tau


def effective_sample_size(series, c: float = 5.0, centre: str = "global") -> float:
    """Effective number of independent samples in a trace `(n_steps,)` or `(n_steps, chains)`:
    `n_steps · chains / τ` with τ from `integrated_autocorrelation` (0 when τ is infinite)."""
    a = _as_trace(series)
    return float(a.size / integrated_autocorrelation(a, c, centre))


def equilibration_time(series, n_candidates: int = 20, c: float = 5.0) -> int:
    """Burn-in to discard: the start t0 (in steps) that maximises the effective sample size of
    `series[t0:]` (Chodera 2016), over `n_candidates` equally spaced t0 in the first half.

    Args:
        series: `(n_steps,)` or `(n_steps, chains)` trace, e.g. energies from the first step.
    Returns:
        t0 in steps (0 if the trace looks equilibrated from the start).
    """
    a = _as_trace(series)
    n = a.shape[0]
    best, best_ess = 0, -1.0
    for t0 in np.unique(np.linspace(0, n // 2, n_candidates).astype(int)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ess = effective_sample_size(a[t0:], c)
        if ess > best_ess:
            best, best_ess = int(t0), ess
    return best


def thin(samples: Tensor, every: int | float) -> Tensor:
    """Every `ceil(every)`-th step of a `(n_steps, ...)` trace, e.g. `every =` its τ; keeps the last step."""
    k = max(1, int(math.ceil(every)))
    return samples[(samples.shape[0] - 1) % k :: k]


# ---------------------------------------------------------------------------------------------
# energy evaluation that never accepts (or raises on) non-finite configurations


def _evaluate(energy: Energy, x: Tensor, forces: bool) -> tuple[Tensor, Tensor | None]:
    """Energies `(B,)` (and forces `(B, dim)` if asked) of `x` `(B, dim)`; rows with a non-finite
    coordinate get energy NaN (an `Energy` refuses them) instead of raising."""
    finite = torch.isfinite(x).all(dim=1)
    if bool(finite.all()):
        return energy.energy_and_forces(x) if forces else (_no_grad_energy(energy, x), None)
    e = x.new_full((x.shape[0],), math.nan)
    f = torch.full_like(x, math.nan) if forces else None
    if bool(finite.any()):
        ef, ff = _evaluate(energy, x[finite], forces)
        e[finite] = ef
        if forces:
            f[finite] = ff
    return e, f


def _sqnorm(d: Tensor) -> Tensor:
    """Squared norms over the last axis, `(..., D)` -> `(...)`; a matrix-vector product, which on
    CPU is ~10x faster than `(d * d).sum(-1)` over a short last axis."""
    return (d * d) @ d.new_ones(d.shape[-1])


def _no_grad_energy(energy: Energy, x: Tensor) -> Tensor:
    with torch.no_grad():
        return energy(x)


class _SingleParticleMoves:
    """Energy changes of single-particle moves: ΔE `(B,)` for moving particle i of every row.

    For a plain `TermEnergy` (every OpenMM- or ASE-built energy) each pair term keeps a cache of
    its pair energies `(n_pairs, B)`; a move of particle i evaluates only the pairs of i at the new
    position (O(N) per move instead of O(N²)). Other terms are re-evaluated whole against a cache
    of their current values `(B, n_other)`. Any other `Energy` is re-evaluated whole. `refresh`
    recomputes every cache (and the energies) from the positions, dropping summed round-off.
    """

    def __init__(self, energy: Energy, pos: Tensor):
        self.energy = energy
        self.local = (
            isinstance(energy, TermEnergy)
            and type(energy)._energy is TermEnergy._energy
            and type(energy).forward is Energy.forward
        )
        # per pair term: (term, params, pair indices i and j, per particle [(rows, other particles)],
        # per particle the params at those rows)
        self.pairs: list[tuple] = []
        self.others: list = []
        if not self.local:
            return
        for term in energy.terms:
            if type(term) is not PairTerm:
                self.others.append(term)
            elif term.n_pairs > 0:
                i, j = term.i.to(pos.device), term.j.to(pos.device)
                per_particle = []
                for p in range(energy.n_particles):
                    rows = torch.nonzero((i == p) | (j == p)).flatten()
                    per_particle.append((rows, torch.where(i[rows] == p, j[rows], i[rows])))
                params = term.params_like(pos)
                subs = [{k: v[rows] for k, v in params.items()} for rows, _ in per_particle]
                self.pairs.append((term, params, i, j, per_particle, subs))

    @staticmethod
    def _pair_values(term, u: Tensor, params: dict) -> Tensor:
        e, _ = term.values(u.clamp_min(torch.finfo(u.dtype).tiny), params, False)
        return e

    def refresh(self, pos: Tensor) -> Tensor:
        """Rebuild the caches at `pos` `(B, N, D)`; returns the energies `(B,)` in kT."""
        if not self.local:
            return _evaluate(self.energy, pos.reshape(pos.shape[0], -1), False)[0]
        with torch.no_grad():
            total = pos.new_zeros(pos.shape[0])
            self.pair_cache = []
            for term, params, i, j, _, _ in self.pairs:
                d = pos[:, i] - pos[:, j]
                cache = self._pair_values(term, _sqnorm(d), params).T.contiguous()  # (n_pairs, B)
                self.pair_cache.append(cache)
                total = total + cache.sum(0)
            if self.others:
                self.cache = torch.stack([t(pos) for t in self.others], dim=1)
                total = total + self.cache.sum(-1)
        return total

    def delta(self, pos: Tensor, energy_now: Tensor, i: int, new: Tensor):
        """ΔE `(B,)` (kT) of moving particle i of `pos` `(B, N, D)` to `new` `(B, D)`, and what
        `accept` needs to update the caches for the rows that accept."""
        if not self.local:
            moved = pos.clone()
            moved[:, i] = new
            e, _ = _evaluate(self.energy, moved.reshape(pos.shape[0], -1), False)
            return e - energy_now, None
        d = torch.zeros_like(energy_now)
        news = []
        with torch.no_grad():
            for (term, _, _, _, per_particle, subs), cache in zip(self.pairs, self.pair_cache):
                rows, other = per_particle[i]
                diff = pos[:, other] - new[:, None]
                e = self._pair_values(term, _sqnorm(diff), subs[i]).T  # (m, B)
                d = d + (e - cache.index_select(0, rows)).sum(0)
                news.append((rows, e))
            other_new = None
            if self.others:
                moved = pos.clone()
                moved[:, i] = new
                other_new = torch.stack([t(moved) for t in self.others], dim=1)
                d = d + (other_new - self.cache).sum(-1)
        return d, (news, other_new)

    def shifted(self, pos: Tensor) -> Tensor:
        """After a common shift of each row's particles (re-centring) to `pos` `(B, N, D)`:
        re-evaluate the non-pair terms (pair energies do not change) and return the energy
        change `(B,)`, zero up to round-off for terms that are translation invariant."""
        if not (self.local and self.others):
            return pos.new_zeros(pos.shape[0])
        old = self.cache
        with torch.no_grad():
            self.cache = torch.stack([t(pos) for t in self.others], dim=1)
        return (self.cache - old).sum(-1)

    def permute(self, perm: Tensor) -> None:
        """Reorder the rows of the caches (replica exchange)."""
        if self.local:
            self.pair_cache = [c[:, perm].contiguous() for c in self.pair_cache]
            if self.others:
                self.cache = self.cache[perm]

    def accept(self, accepted: Tensor, update) -> None:
        """Take the new cached values of the rows `accepted` `(B,)` (bool)."""
        if update is None:
            return
        news, other_new = update
        for cache, (rows, e) in zip(self.pair_cache, news):
            cache.index_copy_(0, rows, torch.where(accepted[None], e, cache.index_select(0, rows)))
        if other_new is not None:
            self.cache = torch.where(accepted[:, None], other_new, self.cache)


# ---------------------------------------------------------------------------------------------
# the batched chains


@dataclass
class _Chains:
    """All replicas as one batch: row k·C + c is chain c at temperature k."""

    energy: Energy
    space: Space
    x: Tensor  # (K*C, dim)
    e: Tensor  # (K*C,)
    f: Tensor | None  # (K*C, dim) forces, MALA only
    beta: Tensor  # (K*C,) inverse temperatures
    K: int
    C: int
    generator: torch.Generator
    n_nonfinite: int = 0

    def per_temperature(self, v: Tensor) -> Tensor:
        return v.reshape(self.K, self.C).mean(dim=1)

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, dtype=self.x.dtype, generator=self.generator)

    def log_uniform(self) -> Tensor:
        return torch.rand(self.x.shape[0], dtype=self.x.dtype, generator=self.generator).log()

    def permute(self, perm: Tensor) -> None:
        """Reorder the rows (replica exchange)."""
        self.x, self.e = self.x[perm], self.e[perm]
        if self.f is not None:
            self.f = self.f[perm]

    def metropolis_accept(self, log_alpha: Tensor, finite: Tensor) -> Tensor:
        self.n_nonfinite += int((~finite).sum())
        return finite & (self.log_uniform() < log_alpha)


def _random_walk_step(ch: _Chains, step: Tensor, moves) -> Tensor:
    """One random-walk Metropolis move of the whole configuration; returns acceptance `(K,)`."""
    y = ch.x + ch.space.project(ch.randn(*ch.x.shape)) * step[:, None]
    ey, _ = _evaluate(ch.energy, y, False)
    acc = ch.metropolis_accept(-ch.beta * (ey - ch.e), torch.isfinite(ey))
    ch.x = torch.where(acc[:, None], y, ch.x)
    ch.e = torch.where(acc, ey, ch.e)
    return ch.per_temperature(acc.to(ch.x.dtype))


def _single_particle_sweep(ch: _Chains, step: Tensor, moves: _SingleParticleMoves) -> Tensor:
    """`n_particles` single-particle moves, particles in a random order shared by the chains;
    returns the mean acceptance `(K,)`. Translation-invariant energies are re-centred after the
    sweep (the energy does not change)."""
    n, d = ch.space.n_particles, ch.space.spatial_dim
    pos = ch.x.reshape(-1, n, d).clone()
    e = ch.e.clone()
    accepted = torch.zeros_like(e)
    for i in torch.randperm(n, generator=ch.generator).tolist():
        new = pos[:, i] + ch.randn(pos.shape[0], d) * step[:, None]
        de, cache = moves.delta(pos, e, i, new)
        acc = ch.metropolis_accept(-ch.beta * de, torch.isfinite(de))
        pos[:, i] = torch.where(acc[:, None], new, pos[:, i])
        e = torch.where(acc, e + de, e)
        moves.accept(acc, cache)
        accepted += acc
    if ch.space.com_free:
        ch.x = ch.space.project(pos.reshape(ch.x.shape))
        e = e + moves.shifted(ch.x.reshape(pos.shape))
    else:
        ch.x = pos.reshape(ch.x.shape)
    ch.e = e
    return ch.per_temperature(accepted / n)


def _mala_step(ch: _Chains, step: Tensor, moves) -> Tensor:
    """One Metropolis-adjusted Langevin move at every temperature; returns acceptance `(K,)`."""
    h = (step * step)[:, None]
    b = ch.beta[:, None]
    fwd = ch.x + 0.5 * h * b * ch.space.project(ch.f)
    y = fwd + ch.space.project(ch.randn(*ch.x.shape)) * step[:, None]
    ey, fy = _evaluate(ch.energy, y, True)
    bwd = y + 0.5 * h * b * ch.space.project(fy)
    log_q_fwd = -_sqnorm(y - fwd) / (2 * h[:, 0])
    log_q_bwd = -_sqnorm(ch.x - bwd) / (2 * h[:, 0])
    finite = torch.isfinite(ey) & torch.isfinite(fy).all(dim=1)
    acc = ch.metropolis_accept(-ch.beta * (ey - ch.e) + log_q_bwd - log_q_fwd, finite)
    ch.x = torch.where(acc[:, None], y, ch.x)
    ch.e = torch.where(acc, ey, ch.e)
    ch.f = torch.where(acc[:, None], fy, ch.f)
    return ch.per_temperature(acc.to(ch.x.dtype))


def _swap(ch: _Chains, parity: int, betas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Replica exchange between temperatures k, k+1 for k ≡ parity (mod 2), every chain at once:
    accepted with `min(1, exp((β_k − β_{k+1})(E_k − E_{k+1})))`.

    Returns the row permutation `(K·C,)` to apply to every per-row array, the pair indices k and
    their acceptance rates `(n_pairs,)`.
    """
    K, C = ch.K, ch.C
    perm = torch.arange(K * C)
    ks = torch.arange(parity, K - 1, 2)
    if ks.numel() == 0:
        return perm, ks, torch.zeros(0, dtype=ch.x.dtype)
    e = ch.e.reshape(K, C)
    log_a = (betas[ks] - betas[ks + 1])[:, None] * (e[ks] - e[ks + 1])
    u = torch.rand(log_a.shape, dtype=log_a.dtype, generator=ch.generator).log()
    acc = u < log_a  # (n_pairs, C)
    lo = (ks[:, None] * C + torch.arange(C))[acc]
    perm[lo], perm[lo + C] = lo + C, lo
    return perm, ks, acc.to(ch.x.dtype).mean(dim=1)


# ---------------------------------------------------------------------------------------------
# the driver shared by metropolis and mala


def _generator(seed: int | None) -> torch.Generator:
    """A run's own CPU generator: seeded, or (None) from OS entropy; the global RNG is untouched."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def _ladder(temperatures: Sequence[float] | None, dtype) -> Tensor:
    t = torch.as_tensor([1.0] if temperatures is None else list(temperatures), dtype=dtype)
    if t.ndim != 1 or t.numel() == 0 or not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"temperatures must be a non-empty list of positive numbers, got {temperatures}")
    if float(t[0]) != 1.0:
        raise ValueError(f"the temperature ladder must start at 1 (the target), got {t[0].item()}")
    return t


def _initial(energy: Energy, x0, K: int, dtype) -> Tensor:
    x = torch.as_tensor(x0).to(dtype=dtype, device="cpu")
    if x.ndim == 2:
        x = x[None].expand(K, -1, -1)
    if x.ndim != 3 or x.shape[0] != K or x.shape[2] != energy.dim:
        raise ValueError(f"x0 must have shape (chains, {energy.dim}) or ({K}, chains, {energy.dim}), "
                         f"got {tuple(torch.as_tensor(x0).shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x0 contains NaN or inf")
    return x.reshape(-1, energy.dim).clone()


def _step_sizes(step_size, K: int, dtype) -> Tensor:
    s = torch.as_tensor(step_size, dtype=dtype).flatten()
    if s.numel() == 1:
        s = s.expand(K)
    if s.numel() != K or not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"step_size must be positive: one number or one per temperature ({K}), got {step_size}")
    return s.clone()


def _run(
    energy: Energy,
    x0,
    n_steps: int,
    step_size,
    *,
    method: str,
    burn_in: int,
    thin: int,
    target_acceptance: float,
    temperatures,
    swap_every: int,
    adapt: bool,
    seed: int | None,
    dtype,
    refresh_every: int = 10,
) -> MCMCResult:
    start = time.perf_counter()
    if n_steps < 1 or burn_in < 0 or thin < 1 or swap_every < 1:
        raise ValueError(f"need n_steps >= 1, burn_in >= 0, thin >= 1, swap_every >= 1; got {n_steps}, "
                         f"{burn_in}, {thin}, {swap_every}")
    if not 0.0 < target_acceptance < 1.0:
        raise ValueError(f"target_acceptance must lie in (0, 1), got {target_acceptance}")
    generator = _generator(seed)
    temps = _ladder(temperatures, dtype)
    K = temps.numel()
    x = _initial(energy, x0, K, dtype)
    C = x.shape[0] // K
    space = Space.of(energy)
    x = space.project(x)
    e, f = _evaluate(energy, x, method == "mala")
    if not bool(torch.isfinite(e).all()) or (f is not None and not bool(torch.isfinite(f).all())):
        bad = torch.nonzero(~torch.isfinite(e)).flatten()[:5].tolist()
        raise ValueError(f"starting configurations have non-finite energies or forces (rows {bad})")
    ch = _Chains(energy, space, x, e, f, (1.0 / temps).repeat_interleave(C), K, C, generator)
    log_step = _step_sizes(step_size, K, dtype).log()
    kernel = {"metropolis": _random_walk_step, "metropolis-single": _single_particle_sweep, "mala": _mala_step}[method]
    moves = None
    if method == "metropolis-single":
        moves = _SingleParticleMoves(energy, x.reshape(-1, energy.n_particles, energy.spatial_dim))
        moves.refresh(x.reshape(-1, energy.n_particles, energy.spatial_dim))

    trace = torch.empty(n_steps, C, dtype=dtype)
    kept_x, kept_e = [], []
    acc_sum = torch.zeros(K, dtype=dtype)
    swap_sum = torch.zeros(max(K - 1, 0), dtype=dtype)
    swap_count = torch.zeros(max(K - 1, 0), dtype=dtype)
    for t in range(burn_in + n_steps):
        step = log_step.exp().repeat_interleave(C)
        acc = kernel(ch, step, moves)
        if K > 1 and (t + 1) % swap_every == 0:
            perm, ks, rate = _swap(ch, (t // swap_every) % 2, 1.0 / temps)
            ch.permute(perm)
            if moves is not None:
                moves.permute(perm)
            if t >= burn_in:
                swap_sum[ks] += rate
                swap_count[ks] += 1
        if moves is not None and (t + 1) % refresh_every == 0:  # drop the round-off of summed ΔE
            ch.e = moves.refresh(ch.x.reshape(-1, energy.n_particles, energy.spatial_dim))
        if t < burn_in:
            if adapt:  # Robbins-Monro on log step size, gain decaying as (1 + t/10)^-0.6
                log_step = (log_step + (1.0 + t / 10.0) ** -0.6 * (acc - target_acceptance)).clamp(-30.0, 30.0)
            continue
        s = t - burn_in
        acc_sum += acc
        trace[s] = ch.e[:C]
        if (s + 1) % thin == 0:
            kept_x.append(ch.x[:C].clone())
            kept_e.append(ch.e[:C].clone())

    samples = torch.cat(kept_x) if kept_x else x.new_zeros(0, energy.dim)
    energies = torch.cat(kept_e) if kept_e else x.new_zeros(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tau = integrated_autocorrelation(trace) if n_steps >= 2 else math.nan
    n_eff = min(float(samples.shape[0]), C * len(kept_x) * thin / tau) if tau > 0 else 0.0
    steps = log_step.exp()
    per_step = energy.n_particles if method == "metropolis-single" else 1
    return MCMCResult(
        samples=samples,
        energies=energies,
        acceptance=float(acc_sum[0] / n_steps),
        autocorrelation_time=tau,
        n_effective=n_eff,
        step_size=float(steps[0]),
        wall_seconds=time.perf_counter() - start,
        energy_trace=trace,
        thin=thin,
        burn_in=burn_in,
        n_proposals=n_steps * K * C * per_step,
        n_nonfinite=ch.n_nonfinite,
        step_sizes=tuple(float(v) for v in steps),
        temperatures=tuple(float(v) for v in temps),
        swap_acceptance=tuple(float(v) for v in swap_sum / swap_count.clamp_min(1)),
        state=ch.x.reshape(K, C, energy.dim).clone(),
        method=method,
    )


def metropolis(
    energy: Energy,
    x0,
    n_steps: int,
    step_size=0.1,
    *,
    single_particle: bool = False,
    burn_in: int = 0,
    thin: int = 1,
    target_acceptance: float = 0.4,
    temperatures: Sequence[float] | None = None,
    swap_every: int = 1,
    adapt: bool = True,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float64,
    refresh_every: int = 10,
) -> MCMCResult:
    """Batched random-walk Metropolis (optionally parallel-tempered) at kT = 1.

    Args:
        energy: the target, E/kT of `(batch, dim)` positions.
        x0: `(chains, dim)` starting configurations in the energy's length unit, or
            `(n_temperatures, chains, dim)` for one start per replica. Their energies must be finite.
        n_steps: recorded steps after burn-in; with `single_particle`, sweeps (`n_particles`
            single-particle moves each, particles in a random order shared by the chains).
        step_size: proposal standard deviation per coordinate (length unit), one number or one
            per temperature; the starting value of the adaptation.
        single_particle: move one particle per proposal. For a plain `TermEnergy` (every OpenMM-
            or ASE-built energy) pair terms are updated for the moved particle only, O(N) per
            move; the sum of energy changes is refreshed by a full evaluation every
            `refresh_every` sweeps.
        burn_in: steps (sweeps) discarded first; the step size adapts during them, then is frozen.
        thin: record the configuration every `thin` steps (the energy trace keeps every step).
        target_acceptance: acceptance the adaptation aims at (per temperature).
        temperatures: parallel-tempering ladder `[1, T_2, ...]` in units of kT; replicas sample
            exp(−E/T), neighbours swap after every `swap_every` steps (even and odd pairs in
            turn). Only the T = 1 chains are returned.
        adapt: adapt the step size during burn-in.
        seed: seed of this run's own random generator (None: a fresh one).
        dtype: float64 (default) or float32.
    Returns:
        `MCMCResult`; `samples` `(n_steps // thin · chains, dim)`.
    """
    return _run(energy, x0, n_steps, step_size, method="metropolis-single" if single_particle else "metropolis",
                burn_in=burn_in, thin=thin, target_acceptance=target_acceptance, temperatures=temperatures,
                swap_every=swap_every, adapt=adapt, seed=seed, dtype=dtype, refresh_every=refresh_every)


def mala(
    energy: Energy,
    x0,
    n_steps: int,
    step_size=0.01,
    *,
    burn_in: int = 0,
    thin: int = 1,
    target_acceptance: float = 0.5,
    temperatures: Sequence[float] | None = None,
    swap_every: int = 1,
    adapt: bool = True,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float64,
) -> MCMCResult:
    """Batched Metropolis-adjusted Langevin (optionally parallel-tempered) at kT = 1.

    The proposal at temperature T is `y = x + (s²/2) F(x)/T + s ξ`, with F = −∇E in kT per
    length unit, ξ standard normal (COM-free for translation-invariant energies) and s the step
    size in the length unit; it is accepted with the Metropolis–Hastings ratio of the Gaussian
    proposal densities. Arguments and result as in `metropolis` (one step = one move of every
    chain; one energy-and-force evaluation per step).
    """
    return _run(energy, x0, n_steps, step_size, method="mala", burn_in=burn_in, thin=thin,
                target_acceptance=target_acceptance, temperatures=temperatures, swap_every=swap_every,
                adapt=adapt, seed=seed, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# reference sets


def sample_reference(
    energy: Energy,
    n_samples: int,
    *,
    chains: int = 256,
    method: str = "metropolis",
    x0=None,
    burn_in: int = 1000,
    pilot: int | None = None,
    step_size=None,
    single_particle: bool | None = None,
    temperatures: Sequence[float] | None = None,
    init_scale: float = 1.0,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float64,
    **kwargs,
) -> MCMCResult:
    """`n_samples` equilibrium samples, thinned by the measured energy autocorrelation time.

    Runs `burn_in` steps (adapting the step size), then a pilot of `pilot` steps (default
    `burn_in`) with the frozen step size to measure τ, then production with thinning
    `ceil(τ_pilot)` until `n_samples` are recorded; τ and `n_effective` in the result are
    re-measured on the production trace (a warning says if τ grew past the thinning).

    Args:
        energy: the target (E/kT).
        n_samples: configurations wanted.
        chains: parallel chains (one batch) when `x0` is None; otherwise `x0` has one row per chain.
        method: "metropolis" (default) or "mala" (single-particle moves by default for particle systems,
            full-configuration moves otherwise; override with `single_particle`). Measured on
            LJ-13 (256 chains, one thread, float64): single-particle Metropolis ~49 sweeps/s with
            τ ≈ 136 sweeps, MALA ~152 steps/s with τ ≈ 830 steps: Metropolis gives about twice
            the independent samples per second there.
        pilot: steps to measure τ on; want ≳ 20 τ (shorter pilots underestimate it).
        x0: `(chains, dim)` starts in the length unit (e.g. reference rows), or None for standard
            normal positions times `init_scale` — far from equilibrium for dense clusters (LJ),
            where a long burn-in (or better starts) is needed.
        step_size: initial step size (length unit); default 0.1 for Metropolis, 0.01 for MALA.
        temperatures: parallel-tempering ladder starting at 1.
        kwargs: passed on to `metropolis` / `mala` (target_acceptance, swap_every, ...).
    Returns:
        `MCMCResult` with exactly `n_samples` rows, `thin` the thinning used and
        `autocorrelation_time` in steps (sweeps).
    """
    if n_samples < 1 or chains < 1:
        raise ValueError(f"need n_samples >= 1 and chains >= 1, got {n_samples}, {chains}")
    if method not in ("mala", "metropolis"):
        raise ValueError(f"method must be 'mala' or 'metropolis', got {method!r}")
    start = time.perf_counter()
    generator = _generator(seed)
    if x0 is None:
        x0 = torch.randn(chains, energy.dim, dtype=dtype, generator=generator) * init_scale
    if single_particle is None:
        single_particle = method == "metropolis" and energy.n_particles > 1
    run = mala if method == "mala" else metropolis
    opts = dict(temperatures=temperatures, dtype=dtype, **kwargs)
    if method == "metropolis":
        opts["single_particle"] = single_particle
    if step_size is None:
        step_size = 0.01 if method == "mala" else 0.1
    pilot = burn_in if pilot is None else pilot
    first = run(energy, x0, max(pilot, 2), step_size, burn_in=burn_in, thin=max(pilot, 2), seed=seed, **opts)
    tau0 = first.autocorrelation_time
    if not math.isfinite(tau0):
        raise RuntimeError("the chains did not move during the pilot run (energy trace constant)")
    every = max(1, int(math.ceil(tau0)))
    rounds = -(-n_samples // first.chains)
    seed2 = None if seed is None else seed + 1
    prod = run(energy, first.state, rounds * every, first.step_sizes, burn_in=0, thin=every, adapt=False,
               seed=seed2, **opts)
    if prod.autocorrelation_time > 1.5 * every:
        warnings.warn(f"energy autocorrelation time grew from {tau0:.3g} (pilot) to "
                      f"{prod.autocorrelation_time:.3g} steps: samples are thinned by {every} only; "
                      "use a longer burn_in / pilot", RuntimeWarning, stacklevel=2)
    n_eff = min(float(n_samples), n_samples * every / prod.autocorrelation_time)
    prod.samples, prod.energies = prod.samples[:n_samples], prod.energies[:n_samples]
    prod.n_effective = n_eff
    prod.burn_in = burn_in + pilot
    prod.n_nonfinite += first.n_nonfinite
    prod.wall_seconds = time.perf_counter() - start
    return prod


# ---------------------------------------------------------------------------------------------
# Langevin MD in OpenMM


def langevin_integrator(temperature, friction: float = 1.0, timestep: float = 0.005, *,
                        n_particles: int | None = None, spatial_dim: int = 3):
    """An OpenMM Langevin integrator of the "middle" (LFMiddle / BAOAB-like) scheme.

    3D: OpenMM's own `LangevinMiddleIntegrator`. 2D (`spatial_dim=2`, needs `n_particles`): a
    `CustomIntegrator` with exactly the steps of `LangevinMiddleIntegrator` (kick, half drift,
    Ornstein–Uhlenbeck velocity update, half drift) whose every velocity update is multiplied by
    a per-DOF mask (1, 1, 0). Started with z = 0 and z velocities 0, z stays *exactly* 0: the z
    force, z noise and z velocity never enter. This is the exact planar Langevin dynamics of the
    x, y degrees of freedom (a harmonic z-restraint would let z fluctuate; projecting after each
    step from Python would cost a round trip per step).

    Args:
        temperature: kelvin (number or openmm Quantity).
        friction: collision rate in 1/ps.
        timestep: in ps.
    """
    import openmm
    from openmm import unit

    from iwsm_md.energies.units import MOLAR_GAS_CONSTANT, kelvin

    T = kelvin(temperature)
    if spatial_dim == 3:
        return openmm.LangevinMiddleIntegrator(T * unit.kelvin, friction / unit.picosecond, timestep * unit.picoseconds)
    if spatial_dim not in (1, 2) or n_particles is None:
        raise ValueError(f"spatial_dim must be 1, 2 or 3 (and n_particles given below 3), got {spatial_dim}")
    # variable names that no force's global parameter is likely to share (OpenMM refuses clashes)
    integ = openmm.CustomIntegrator(timestep * unit.picoseconds)
    integ.addGlobalVariable("lm_a", math.exp(-friction * timestep))
    integ.addGlobalVariable("lm_b", math.sqrt(1.0 - math.exp(-2.0 * friction * timestep)))
    integ.addGlobalVariable("lm_kT", MOLAR_GAS_CONSTANT * T)
    integ.addPerDofVariable("lm_x1", 0.0)
    integ.addPerDofVariable("lm_mask", 1.0)
    integ.addUpdateContextState()
    integ.addComputePerDof("v", "lm_mask*(v + dt*f/m)")
    integ.addConstrainVelocities()
    integ.addComputePerDof("x", "x + 0.5*dt*v")
    integ.addComputePerDof("v", "lm_mask*(lm_a*v + lm_b*sqrt(lm_kT/m)*gaussian)")
    integ.addComputePerDof("x", "x + 0.5*dt*v")
    integ.addComputePerDof("lm_x1", "x")
    integ.addConstrainPositions()
    integ.addComputePerDof("v", "lm_mask*(v + (x-lm_x1)/dt)")
    keep = [1.0 if k < spatial_dim else 0.0 for k in range(3)]
    integ.setPerDofVariableByName("lm_mask", [openmm.Vec3(*keep)] * int(n_particles))
    return integ


def _lattice(n: int, spatial_dim: int, spacing: float) -> np.ndarray:
    side = int(math.ceil(n ** (1.0 / spatial_dim)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * spatial_dim, indexing="ij"), -1).reshape(-1, spatial_dim)
    pos = np.zeros((n, 3))
    pos[:, :spatial_dim] = grid[:n] * spacing
    return pos - pos.mean(0) * np.array([1.0] * spatial_dim + [0.0] * (3 - spatial_dim))


def langevin_openmm(
    system,
    temperature,
    n_samples: int,
    *,
    stride: int = 100,
    burn_in: int = 10_000,
    timestep: float = 0.005,
    friction: float = 1.0,
    positions=None,
    spatial_dim: int = 3,
    platform: str = "Reference",
    platform_properties: dict | None = None,
    minimize: bool = True,
    lattice_spacing: float = 1.0,
    seed: int = 0,
) -> MCMCResult:
    """Langevin MD (LangevinMiddle scheme) of an OpenMM `System`, one replica.

    Args:
        system: an `openmm.System` (nm, kJ/mol, amu, ps).
        temperature: kelvin (number or Quantity); energies are reported in its kT.
        n_samples: configurations to record, one every `stride` integrator steps after `burn_in`
            steps.
        timestep: ps; friction: 1/ps.
        positions: `(n, 3)` or `(n, spatial_dim)` start in nm; None: a square/cubic lattice of
            `lattice_spacing` nm, energy-minimised if `minimize`.
        spatial_dim: 3, or 2 for planar systems: z is set to 0 and kept exactly 0 by the masked
            integrator of `langevin_integrator` (z force, noise and velocity never enter).
        platform: "Reference" (double precision) or "CPU" (`platform_properties` e.g.
            {"Threads": "1"}).
    Returns:
        `MCMCResult` with `samples` `(n_samples, n·spatial_dim)` float64 in nm, `energies` in kT,
        `autocorrelation_time` in integrator steps (resolution `stride`), `acceptance` NaN and
        `step_size` the timestep (ps). Raises RuntimeError if a planar run leaves z = 0.
    """
    import openmm
    from openmm import unit

    from iwsm_md.energies.units import MOLAR_GAS_CONSTANT, kelvin

    start = time.perf_counter()
    T = kelvin(temperature)
    kT = MOLAR_GAS_CONSTANT * T
    n = system.getNumParticles()
    if n_samples < 1 or stride < 1 or burn_in < 0:
        raise ValueError(f"need n_samples >= 1, stride >= 1, burn_in >= 0; got {n_samples}, {stride}, {burn_in}")
    if spatial_dim not in (2, 3):
        raise ValueError(f"spatial_dim must be 2 or 3, got {spatial_dim}")
    if positions is None:
        pos = _lattice(n, spatial_dim, lattice_spacing)
    else:
        p = np.asarray(positions.value_in_unit(unit.nanometer) if unit.is_quantity(positions) else positions,
                       dtype=np.float64).reshape(n, -1)
        if p.shape[1] not in (spatial_dim, 3):
            raise ValueError(f"positions must be (n, 3) or (n, {spatial_dim}) in nm, got {p.shape}")
        pos = np.zeros((n, 3))
        pos[:, : p.shape[1]] = p
    if spatial_dim == 2:
        pos[:, 2] = 0.0
    integ = langevin_integrator(T, friction, timestep, n_particles=n, spatial_dim=spatial_dim)
    integ.setRandomNumberSeed(int(seed) + 1)  # 0 would mean "pick one at random"
    plat = openmm.Platform.getPlatformByName(platform)
    context = openmm.Context(system, integ, plat, dict(platform_properties or {}))
    context.setPositions(pos * unit.nanometer)
    if minimize:
        openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(T * unit.kelvin, int(seed) + 1)
    if spatial_dim == 2:
        v = context.getState(getVelocities=True).getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
        v[:, 2] = 0.0
        context.setVelocities(v * (unit.nanometer / unit.picosecond))
        p = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        p[:, 2] = 0.0
        context.setPositions(p * unit.nanometer)
    if burn_in:
        integ.step(burn_in)
    samples = np.empty((n_samples, n * spatial_dim))
    energies = np.empty(n_samples)
    for s in range(n_samples):
        integ.step(stride)
        state = context.getState(getPositions=True, getEnergy=True)
        p = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        if spatial_dim == 2 and np.any(p[:, 2] != 0.0):
            raise RuntimeError(f"planar run left z = 0 (max |z| = {np.abs(p[:, 2]).max():.3g} nm)")
        samples[s] = p[:, :spatial_dim].reshape(-1)
        energies[s] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kT
    del context
    trace = torch.from_numpy(energies)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tau = integrated_autocorrelation(trace) * stride if n_samples >= 2 else math.nan
    return MCMCResult(
        samples=torch.from_numpy(samples),
        energies=torch.from_numpy(energies),
        acceptance=math.nan,
        autocorrelation_time=tau,
        n_effective=min(float(n_samples), n_samples * stride / tau) if tau > 0 else 0.0,
        step_size=float(timestep),
        wall_seconds=time.perf_counter() - start,
        energy_trace=trace,
        thin=stride,
        burn_in=burn_in,
        n_proposals=0,
        n_nonfinite=0,
        step_sizes=(float(timestep),),
        temperatures=(1.0,),
        state=torch.from_numpy(samples[-1:])[None],
        method="langevin-openmm",
    )
