"""Importance sampling with a sampler's exact density: weights p/q, effective sample size,
reweighted observables with error bars, and the log partition function.

A sampler with a tractable density q (the probability-flow ODE: `Sampler.importance_sample`,
`Sampler.log_prob`) and a target known up to its normalising constant, `p(x) = exp(−E(x))/Z`
(E in kT), give the self-normalised importance-sampling (SNIS) estimates of this module.
Conventions:

- `log_p_unnorm` is `−E(x)` in kT (`(n,)`), `log_q` the sampler's log density at the same
  samples (`(n,)`), both in the same coordinates (the energy's: densities per length
  unit^effective_dim); the log weights are `log w = log_p_unnorm − log_q`.
- A sample with `E = +inf` (`log_p_unnorm = −inf`) and a finite `log_q` has weight 0: it is
  kept and counts in n. A sample whose log weight cannot be formed — `log_q` NaN or ±inf,
  `E` NaN or `−inf` — is *masked*: weight 0, left out of n, counted in the result's
  `n_masked` and named in a `RuntimeWarning`, never dropped silently. Masking biases the
  estimates when the masked samples are not rare: the count says how many.
- Every computation is in float64; results are float64 tensors or Python floats.

Estimates carry delta-method standard errors, reliable only when the effective sample size is
large (tens or more): a small ESS means the error bars themselves are unreliable. (This
ESS is Kish's, of weights; `iwsm_md.mcmc.effective_sample_size` is that of a correlated chain.)
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor


class Weights(NamedTuple):
    """Normalised importance weights.

    log_w: `(n,)` float64 log weights normalised over the kept samples (logsumexp = 0); masked
        samples have `−inf` (weight 0), so rows stay aligned with the samples.
    ess: Kish's effective sample size `(Σw)²/Σw²`, a number of samples in [1, n − n_masked].
    n_masked: samples masked for a non-finite log q or energy.
    """

    log_w: Tensor
    ess: float
    n_masked: int


class Estimate(NamedTuple):
    """An estimate with its standard error (same shape and unit) and the count of masked samples."""

    value: Any  # float, or a float64 Tensor for vector observables
    stderr: Any
    n_masked: int


@dataclass
class ImportanceSample:
    """Samples of a sampler with their log density and importance weights (see
    `Sampler.importance_sample`). Reweighted averages: `reweighted_mean(values, s.log_w)`;
    log Z: `log_partition(-s.energy, s.log_q)`.

    Attributes:
        x: `(n, dim)` samples in the energy's coordinates (non-finite rows are kept).
        log_q: `(n,)` float64 log density of the sampler at x, per length unit^effective_dim.
        energy: `(n,)` float64 energies in kT (NaN where x is non-finite).
        log_w: `(n,)` normalised log weights (`−inf` for masked samples).
        ess: Kish's effective sample size (a number of samples).
        n_masked: samples masked for a non-finite log q or energy.
    """

    x: Tensor
    log_q: Tensor
    energy: Tensor
    log_w: Tensor
    ess: float
    n_masked: int


def _as_1d(values, name: str) -> Tensor:
    t = torch.as_tensor(values).detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != 1:
        raise ValueError(f"{name} must have shape (n,), got {tuple(t.shape)}")
    return t


def _warn_masked(n_masked: int, n: int, why: str, stacklevel: int = 3) -> None:
    """A RuntimeWarning naming the count, attributed to the caller of the public function."""
    if n_masked:
        warnings.warn(f"{n_masked} of {n} samples have {why}: they are masked (weight 0) and left out of the "
                      "estimates (counted in n_masked)", RuntimeWarning, stacklevel=stacklevel)


def _raw_log_weights(log_p_unnorm, log_q) -> tuple[Tensor, Tensor]:
    """`(log w (n,), kept (n,) bool)`: masked rows get −inf (see the module docstring)."""
    log_p, log_q = _as_1d(log_p_unnorm, "log_p_unnorm"), _as_1d(log_q, "log_q")
    if log_p.shape != log_q.shape:
        raise ValueError(f"log_p_unnorm and log_q must have the same shape (n,), got {tuple(log_p.shape)} and "
                         f"{tuple(log_q.shape)}")
    kept = torch.isfinite(log_q) & ~torch.isnan(log_p) & (log_p < math.inf)
    log_w = torch.where(kept, log_p - torch.where(kept, log_q, 0.0), -math.inf)
    _warn_masked(int((~kept).sum()), len(kept), "a non-finite log q or energy (NaN, log q = ±inf, or E = −inf)",
                 stacklevel=4)
    return log_w, kept


def _normalised(log_w: Tensor) -> Tensor:
    """`log_w − logsumexp(log_w)`; ValueError when no weight is positive."""
    total = torch.logsumexp(log_w, 0)
    if not torch.isfinite(total):
        raise ValueError("no sample has a positive finite importance weight (every log weight is −inf, or "
                         "+inf overflowed): nothing to estimate")
    return log_w - total


def _kish(log_w_normalised: Tensor) -> float:
    return float(1.0 / torch.exp(2.0 * log_w_normalised).sum())


def importance_weights(log_p_unnorm, log_q) -> Weights:
    """Self-normalised importance weights p/q of samples of q.

    Args:
        log_p_unnorm: `(n,)` unnormalised target log density `−E(x)`, E in kT.
        log_q: `(n,)` the sampler's log density at the same x (same coordinates).
    Returns `Weights(log_w, ess, n_masked)`: `log_w` `(n,)` float64 normalised over the kept
    samples, `−inf` for masked ones; masked samples are counted and warned about.
    """
    log_w, kept = _raw_log_weights(log_p_unnorm, log_q)
    log_w = _normalised(log_w)
    return Weights(log_w, _kish(log_w), int((~kept).sum()))


def effective_sample_size(log_w) -> float:
    """Kish's effective sample size `(Σw)²/Σw²` of `(n,)` log weights (normalised or not;
    `−inf` is a zero weight). NaN or `+inf` log weights are masked, counted in a warning.
    Returns a number of samples in [1, n]: n for equal weights."""
    log_w = _as_1d(log_w, "log_w")
    bad = torch.isnan(log_w) | (log_w == math.inf)
    _warn_masked(int(bad.sum()), len(log_w), "a NaN or +inf log weight")
    return _kish(_normalised(torch.where(bad, -math.inf, log_w)))


def reweighted_mean(values, log_w) -> Estimate:
    """Self-normalised importance-sampling average of an observable, with its standard error.

    `mean = Σ w̃_i f_i` and, by the delta method, `stderr = √(Σ w̃_i² (f_i − mean)²)` (w̃: the
    normalised weights), which for equal weights is the usual `std/√n`.

    Args:
        values: `(n,)` or `(n, k…)` observable f at each sample, in any unit.
        log_w: `(n,)` log weights, normalised or not (`importance_weights(...).log_w`); `−inf`
            is a zero weight.
    Returns `Estimate(value, stderr, n_masked)`: floats for `(n,)` values, `(k…)` float64
    tensors otherwise, in the unit of f. Samples with a NaN or `+inf` log weight, or with a
    positive weight and a non-finite value (any entry of the row), are masked, counted and
    warned about; non-finite values at zero weight are ignored (they contribute nothing).
    """
    log_w = _as_1d(log_w, "log_w")
    f = torch.as_tensor(values).detach().to(device="cpu", dtype=torch.float64)
    if f.ndim < 1 or f.shape[0] != log_w.shape[0]:
        raise ValueError(f"values must have shape (n, ...) with n = {log_w.shape[0]} (the length of log_w), "
                         f"got {tuple(f.shape)}")
    rows = f.reshape(f.shape[0], -1)
    bad = torch.isnan(log_w) | (log_w == math.inf) | ((log_w > -math.inf) & ~torch.isfinite(rows).all(1))
    _warn_masked(int(bad.sum()), len(log_w), "a NaN or +inf log weight, or a non-finite value at a positive weight")
    zero = bad | (log_w == -math.inf)
    w = torch.exp(_normalised(torch.where(zero, -math.inf, log_w)))
    rows = torch.where(zero[:, None], 0.0, rows)
    mean = (w[:, None] * rows).sum(0)
    stderr = torch.sqrt((w[:, None] ** 2 * (rows - mean) ** 2).sum(0))
    if f.ndim == 1:
        return Estimate(float(mean[0]), float(stderr[0]), int(bad.sum()))
    return Estimate(mean.reshape(f.shape[1:]), stderr.reshape(f.shape[1:]), int(bad.sum()))


def log_partition(log_p_unnorm, log_q) -> Estimate:
    """Estimate of `log Z = log ∫ exp(−E(x)) dx` from samples of q.

    `log Ẑ = logsumexp_i(−E_i − log q_i) − log n` over the n kept samples (an unbiased Ẑ; log Ẑ
    is biased low by about stderr²/2). Standard error by the delta method:
    `stderr = std(w) / (√n · mean(w))` (sample std of the weights, ddof 1; NaN for n = 1).

    Args:
        log_p_unnorm: `(n,)` `−E(x)`, E in kT.
        log_q: `(n,)` the sampler's log density at the same x, in the coordinates of E.
    Returns `Estimate(value, stderr, n_masked)`: dimensionless floats (log Z also carries
    log (length unit)^effective_dim, the unit of the integral). Masked samples (see the module
    docstring) are left out of n, counted and warned about.
    """
    log_w, kept = _raw_log_weights(log_p_unnorm, log_q)
    n = int(kept.sum())
    if n == 0 or not torch.isfinite(torch.logsumexp(log_w, 0)):
        raise ValueError("no sample has a positive finite importance weight: cannot estimate log Z")
    log_w = log_w[kept]
    top = log_w.max()
    w = torch.exp(log_w - top)  # in (0, 1]: mean and std without overflow
    mean = w.mean()
    value = float(top + torch.log(mean))
    stderr = float(w.std(correction=1) / (math.sqrt(n) * mean)) if n > 1 else math.nan
    return Estimate(value, stderr, len(kept) - n)
