"""Diagnostics a simulator expects: energy and pair-distance histograms against a reference, and the
radial distribution of a cluster, with plotting helpers that print the protocol's TVD.

Configurations are `(n, n_particles * spatial_dim)` arrays (numpy or torch), flattened
particle-major, in the system's length unit; energies are in kT. Histograms use exactly the
bins of `iwsm_md.metrics` (`ceil(sqrt(n_ref))` equal-width bins over the reference range plus
one overflow bin each side), so the TVD a plot prints is the E-TVD / D-TVD of the results
tables. Plots are drawn on a `matplotlib.figure.Figure` (no pyplot, no display needed) or on a
given `ax`; each helper returns the Figure.

Radial distribution of a cluster (no box, so no bulk density to divide by): with `n_pairs =
n_particles (n_particles − 1) / 2` pairs i < j and `n_frames` configurations,

    g(r_k) = h_k / (n_frames · n_pairs · V_k),

where `h_k` counts the pair distances in shell k over all frames and `V_k` is the shell's exact
volume, `4π/3 (r_{k+1}³ − r_k³)` in 3-D and `π (r_{k+1}² − r_k²)` in 2-D (→ 4πr²dr, 2πr dr).
So g is the density of the separation vector `r_i − r_j` of a random pair, per unit volume
(length^−spatial_dim): `Σ_k g_k V_k` is the fraction of pair distances below `r_max` (1 when
`r_max` exceeds every distance), and `n_pairs · Σ_k g_k V_k` the mean number of pairs within it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from iwsm_md.metrics import as_float64, bin_index, ceil_root, histogram_tvd, pair_distances

__all__ = [
    "HistogramComparison",
    "RadialDistribution",
    "energy_histogram",
    "pair_distance_histogram",
    "radial_distribution",
    "plot_energy",
    "plot_pair_distances",
    "plot_rdf",
    "plot_history",
]


@dataclass(frozen=True)
class HistogramComparison:
    """Histograms of sample and reference values on the reference's bins, and their TVD.

    Attributes:
        edges: `(n_bins + 1,)` equal-width bin edges over the reference range, in the values' unit.
        density: `(n_bins,)` sample density (fraction of all sample values per unit value), so the
            in-range mass is `Σ density · width`.
        reference_density: `(n_bins,)` the same for the reference.
        below: fraction of sample values below the reference range (lower overflow bin).
        above: fraction above it, NaN and +inf included (upper overflow bin).
        tvd: `metrics.histogram_tvd` over these `n_bins + 2` cells, in [0, 1].
    """

    edges: np.ndarray
    density: np.ndarray
    reference_density: np.ndarray
    below: float
    above: float
    tvd: float


@dataclass(frozen=True)
class RadialDistribution:
    """g(r) of a cluster (normalisation in the module docstring).

    Attributes:
        edges: `(n_bins + 1,)` shell edges from 0 to `r_max`, in the samples' length unit.
        r: `(n_bins,)` shell centres.
        g: `(n_bins,)` pair-separation density per unit volume, length^−spatial_dim.
    """

    edges: np.ndarray
    r: np.ndarray
    g: np.ndarray


# ---------------------------------------------------------------------------------------------
# histograms


def _fractions(values: np.ndarray, lo: float, hi: float, n_bins: int) -> np.ndarray:
    """`(n_bins + 2,)` fraction of `values` in each cell of `metrics.bin_index`."""
    return np.bincount(bin_index(values, lo, hi, n_bins), minlength=n_bins + 2) / values.size


def _compare(values: Any, reference: Any, n_bins: int) -> HistogramComparison:
    """Histograms of `values` and `reference` (any shapes, flattened) on `n_bins` reference bins."""
    v, ref = as_float64(values).ravel(), as_float64(reference).ravel()
    tvd = histogram_tvd(v, ref, n_bins=n_bins)  # validates both (non-empty, finite reference)
    lo, hi = float(ref.min()), float(ref.max())
    edges = np.linspace(lo, hi, n_bins + 1)
    width = (hi - lo) / n_bins if hi > lo else 1.0
    p, q = _fractions(v, lo, hi, n_bins), _fractions(ref, lo, hi, n_bins)
    return HistogramComparison(edges, p[1:-1] / width, q[1:-1] / width, float(p[0]), float(p[-1]), tvd)


def energy_histogram(energy_values: Any, reference_values: Any, n_bins: int | None = None) -> HistogramComparison:
    """Energy histograms of a sample `(n,)` and a reference `(n_ref,)` (kT) and their E-TVD.

    Bins: `n_bins` (default `ceil(sqrt(n_ref))`, the E-TVD protocol) over the reference range.
    Get the energies with `metrics.energies(energy, x)`; NaN/inf sample energies count in the
    upper overflow bin. `tvd` equals `metrics.energy_tvd(energy, x, x_ref)` for default bins.
    """
    ref = as_float64(reference_values).ravel()
    return _compare(energy_values, ref, ceil_root(ref.size, 2) if n_bins is None else int(n_bins))


def pair_distance_histogram(samples: Any, reference: Any, n_particles: int, spatial_dim: int,
                            n_bins: int | None = None) -> HistogramComparison:
    """Histograms of all pair distances (pooled over pairs i < j and frames) of `samples`
    `(n, n_particles*spatial_dim)` and `reference` `(n_ref, ...)`, in their length unit, and the D-TVD.

    Bins: `n_bins` (default `ceil(sqrt(n_ref))` with n_ref the number of reference
    *configurations*, the D-TVD protocol) over the pooled reference distance range; `tvd` then
    equals `metrics.distance_tvd(samples, reference, n_particles, spatial_dim)`.
    """
    d_ref = pair_distances(reference, n_particles, spatial_dim)
    n_bins = ceil_root(d_ref.shape[0], 2) if n_bins is None else int(n_bins)
    return _compare(pair_distances(samples, n_particles, spatial_dim), d_ref, n_bins)


def radial_distribution(samples: Any, n_particles: int, spatial_dim: int, r_max: float,
                        n_bins: int) -> RadialDistribution:
    """g(r) of a non-periodic cluster from `samples` `(n, n_particles*spatial_dim)`, `spatial_dim`
    2 or 3, on `n_bins` shells of equal width over `[0, r_max]` (length unit of the samples).

    Pair distances are computed in float64 from coordinate differences (`metrics.pair_distances`;
    the same as mdtraj's `compute_distances(..., periodic=False)`). Normalised per pair, frame
    and shell volume: see the module docstring. Distances beyond `r_max` and non-finite ones are
    left out (so `Σ g · V` is then below 1).
    """
    if spatial_dim not in (2, 3):
        raise ValueError(f"radial_distribution is for spatial_dim 2 or 3, got {spatial_dim}")
    if n_particles < 2:
        raise ValueError(f"a radial distribution needs at least 2 particles, got {n_particles}")
    if not (r_max > 0 and math.isfinite(r_max)) or int(n_bins) < 1:
        raise ValueError(f"need r_max > 0 and n_bins >= 1, got r_max={r_max}, n_bins={n_bins}")
    d = pair_distances(samples, n_particles, spatial_dim)
    edges = np.linspace(0.0, float(r_max), int(n_bins) + 1)
    counts, _ = np.histogram(d[np.isfinite(d)], bins=edges)
    ball = (4.0 / 3.0 * math.pi * edges**3) if spatial_dim == 3 else (math.pi * edges**2)
    g = counts / (d.size * np.diff(ball))  # d.size = n_frames * n_pairs
    return RadialDistribution(edges, 0.5 * (edges[1:] + edges[:-1]), g)


# ---------------------------------------------------------------------------------------------
# plots


def _axes(ax: Axes | None) -> Axes:
    """`ax`, or the single Axes of a new Figure (not registered with pyplot)."""
    return Figure(figsize=(5, 3.5), layout="constrained").subplots() if ax is None else ax


def _draw(ax: Axes, h: HistogramComparison, metric: str, label: str, reference_label: str) -> Figure:
    outside = h.below + h.above
    note = f" ({100 * outside:.3g}% outside the reference range)" if outside else ""
    ax.stairs(h.reference_density, h.edges, color="0.3", lw=1.5, label=reference_label)
    ax.stairs(h.density, h.edges, fill=True, alpha=0.5, color="C0", label=label + note)
    ax.set_title(f"{metric} = {h.tvd:.3f}")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    return ax.figure


def _length_label(what: str, length_unit: str | None) -> str:
    return f"{what} ({length_unit})" if length_unit else f"{what} (reduced units)"


def plot_energy(energy_values: Any, reference_values: Any, *, ax: Axes | None = None, n_bins: int | None = None,
                label: str = "sample", reference_label: str = "reference") -> Figure:
    """Energy histogram `(n,)` (kT) of a sample over the reference's `(n_ref,)`; the title prints
    the E-TVD (`energy_histogram`). Draws on `ax` if given; returns its Figure."""
    ax = _axes(ax)
    fig = _draw(ax, energy_histogram(energy_values, reference_values, n_bins), "E-TVD", label, reference_label)
    ax.set_xlabel("energy (kT)")
    return fig


def plot_pair_distances(samples: Any, reference: Any, n_particles: int, spatial_dim: int, *,
                        length_unit: str | None = None, ax: Axes | None = None, n_bins: int | None = None,
                        label: str = "sample", reference_label: str = "reference") -> Figure:
    """Pair-distance histogram of `samples` `(n, n_particles*spatial_dim)` over the reference's;
    the title prints the D-TVD (`pair_distance_histogram`). `length_unit` only labels the axis.
    Draws on `ax` if given; returns its Figure."""
    ax = _axes(ax)
    h = pair_distance_histogram(samples, reference, n_particles, spatial_dim, n_bins)
    fig = _draw(ax, h, "D-TVD", label, reference_label)
    ax.set_xlabel(_length_label("pair distance", length_unit))
    return fig


def plot_rdf(samples: Any, n_particles: int, spatial_dim: int, r_max: float, n_bins: int, *,
             reference: Any = None, length_unit: str | None = None, ax: Axes | None = None,
             label: str = "sample", reference_label: str = "reference") -> Figure:
    """g(r) of `samples` `(n, n_particles*spatial_dim)` (`radial_distribution`), with the
    reference's overlaid and the D-TVD (protocol bins, `pair_distance_histogram`) in the title
    when `reference` is given. `length_unit` only labels the axes. Returns the Figure."""
    ax = _axes(ax)
    rdf = radial_distribution(samples, n_particles, spatial_dim, r_max, n_bins)
    if reference is not None:
        ref = radial_distribution(reference, n_particles, spatial_dim, r_max, n_bins)
        ax.stairs(ref.g, ref.edges, color="0.3", lw=1.5, label=reference_label)
        tvd = pair_distance_histogram(samples, reference, n_particles, spatial_dim).tvd
        ax.set_title(f"D-TVD = {tvd:.3f}")
    ax.stairs(rdf.g, rdf.edges, fill=True, alpha=0.5, color="C0", label=label)
    unit = length_unit or "length unit"
    ax.set_xlabel(_length_label("r", length_unit))
    ax.set_ylabel(f"g(r) per pair ({unit}$^{{-{spatial_dim}}}$)")
    ax.legend(fontsize="small")
    return ax.figure


def plot_history(history: list[dict], mode: str) -> Figure:
    """Training curves: loss, weight ESS and inner ESS against epoch, from `Sampler.history`
    (one dict per epoch); `mode` labels a run without importance weights."""
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    axes = fig.subplots(1, 3)
    epochs = [h["epoch"] for h in history]
    for ax, key, title in zip(axes, ("loss", "weight_ess", "inner_ess"),
                              ("loss", "weight ESS (fraction)", "inner ESS of the K copies")):
        values = [h.get(key, math.nan) for h in history]
        ax.plot(epochs, values, marker="." if len(epochs) < 50 else None)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        if key == "loss" and all(v > 0 for v in values if math.isfinite(v)) and any(map(math.isfinite, values)):
            ax.set_yscale("log")
        if key == "weight_ess" and not any(map(math.isfinite, values)):
            ax.text(0.5, 0.5, f"no importance weights\nin mode {mode!r}", ha="center", va="center",
                    transform=ax.transAxes)
    return fig
