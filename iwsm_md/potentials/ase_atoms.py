"""The LJ-n benchmark as an ASE `Atoms` with a calculator.

ASE units: length 1 = 1 Å, energy 1 = 1 eV, so the reduced-unit benchmark (kT = 1) is at
`ASE_REDUCED_TEMPERATURE` kelvin, where kT = 1 eV.
"""
from __future__ import annotations

import math

import numpy as np
from ase import Atoms, units
from ase.calculators.lj import LennardJones
from ase.calculators.mixing import SumCalculator

from iwsm_md.energies.ase_calculators import HarmonicCentroidRestraint
from iwsm_md.potentials.openmm_systems import _check_n_particles

ASE_REDUCED_TEMPERATURE: float = 1.0 / units.kB
"""Temperature in kelvin at which kT = 1 eV, i.e. 1/k_B (≈ 11604.5 K)."""

_LATTICE_SPACING = 1.1  # Å, near the LJ minimum r_min = 1
_JITTER = 0.05  # Å, uniform per coordinate: nearest neighbours stay >= 0.92 Å apart


def _default_positions(n: int, seed: int) -> np.ndarray:
    """`(n, 3)` Å: the n points of a jittered cubic lattice nearest its centre, centred."""
    rng = np.random.default_rng(seed)
    m = math.ceil(n ** (1 / 3))
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    grid -= grid.mean(axis=0)
    order = rng.permutation(len(grid))  # random tie-breaking among equidistant lattice points
    grid = grid[order][np.argsort(np.sum(grid[order] ** 2, axis=1), kind="stable")[:n]]
    pos = _LATTICE_SPACING * grid + rng.uniform(-_JITTER, _JITTER, size=(n, 3))
    return pos - pos.mean(axis=0)


def lj_cluster_atoms(n_particles: int, positions=None, seed: int = 0, *, symbol: str = "Ar") -> Atoms:
    """LJ-n as ASE `Atoms`: the equivalent of `lj_cluster(n_particles)` in eV and Å.

    Energy `E = Σ_{i≠j} [(1/d)^12 − 2 (1/d)^6] + 0.5 Σ_i |x_i − x̄|²` in eV with d in Å, via
    `SumCalculator([LennardJones(σ = 2^(-1/6), ε = 2, rc = 1e3, smooth=False),
    HarmonicCentroidRestraint(k = 1)])`: ASE's Σ_{i<j} 4ε[(σ/r)^12 − (σ/r)^6] with these
    values is exactly the ordered-pair sum above (its shift at rc is ~1e-17 eV per pair).
    The same numbers read as Å and eV here or as nm and kJ/mol in OpenMM give equal energies.
    Masses are 1 amu, as in `lj_cluster`; no cell, no periodic boundaries.

    Args:
        n_particles: number of atoms, an integer >= 2.
        positions: optional `(n_particles, 3)` array in Å. Default: a random non-overlapping
            cluster (jittered cubic lattice of spacing 1.1 Å, centred), deterministic in `seed`.
        seed: seed of the default positions.
        symbol: chemical symbol given to every atom.
    """
    n = _check_n_particles(n_particles)
    if positions is None:
        pos = _default_positions(n, seed)
    else:
        pos = np.asarray(positions, dtype=float)
        if pos.shape != (n, 3):
            raise ValueError(f"positions must have shape ({n}, 3) in Å, got {pos.shape}")
        if not np.all(np.isfinite(pos)):
            raise ValueError("positions contain NaN or inf")
    atoms = Atoms(symbols=[symbol] * n, positions=pos, masses=np.ones(n), pbc=False)
    atoms.calc = SumCalculator(
        [
            LennardJones(sigma=2.0 ** (-1.0 / 6.0), epsilon=2.0, rc=1e3, smooth=False),
            HarmonicCentroidRestraint(k=1.0),
        ]
    )
    return atoms
