"""The particle benchmark systems (LJ-n, DW-n) as real OpenMM `System`s.

OpenMM units: length 1 = 1 nm, energy 1 = 1 kJ/mol, mass 1 amu. The benchmarks are in reduced
units with kT = 1, so they are simulated at `REDUCED_TEMPERATURE` kelvin, where kT = 1 kJ/mol.
"""
from __future__ import annotations

import numbers

import openmm
from openmm import unit

REDUCED_TEMPERATURE: float = (1.0 * unit.kilojoule_per_mole / unit.MOLAR_GAS_CONSTANT_R).value_in_unit(unit.kelvin)
"""Temperature in kelvin at which kT = 1 kJ/mol, i.e. 1/R (≈ 120.27 K)."""


def _check_n_particles(n_particles: int) -> int:
    if isinstance(n_particles, bool) or not isinstance(n_particles, numbers.Integral):
        raise TypeError(f"n_particles must be an integer, got {n_particles!r} of type {type(n_particles).__name__}")
    if n_particles < 2:
        raise ValueError(f"n_particles must be at least 2 for a pair potential, got n_particles={n_particles}")
    return int(n_particles)


def _system_of(n_particles: int) -> openmm.System:
    system = openmm.System()
    for _ in range(n_particles):
        system.addParticle(1.0)  # amu
    return system


def _pair_force(expression: str, n_particles: int, name: str, **global_parameters: float) -> openmm.CustomNonbondedForce:
    force = openmm.CustomNonbondedForce(expression)
    force.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
    for key, value in global_parameters.items():
        force.addGlobalParameter(key, value)
    for _ in range(n_particles):
        force.addParticle([])
    force.setName(name)
    return force


def lj_cluster(n_particles: int) -> openmm.System:
    """LJ-n: a Lennard-Jones cluster held together by a harmonic restraint to its centroid.

    `E = Σ_{i≠j} [(1/d_ij)^12 − 2 (1/d_ij)^6] + 0.5 Σ_i |x_i − x̄|²` in kJ/mol with d in nm
    (ordered pairs, i.e. twice Σ_{i<j}: ε = 2 kJ/mol, r_min = 1 nm; restraint k = 1 kJ/mol/nm²;
    x̄ the unweighted mean position). Every particle has mass 1 amu. At `REDUCED_TEMPERATURE`
    this is the kT = 1 benchmark (LJ-13, LJ-55). Positions are `(n_particles, 3)` in nm.

    Raises TypeError / ValueError unless `n_particles` is an integer >= 2.
    """
    n = _check_n_particles(n_particles)
    system = _system_of(n)
    system.addForce(
        _pair_force(
            "epsilon*((rmin/r)^12 - 2*(rmin/r)^6)", n, "LennardJones", epsilon=2.0, rmin=1.0
        )
    )
    restraint = openmm.CustomCentroidBondForce(2, "0.5*k*distance(g1,g2)^2")
    restraint.addGlobalParameter("k", 1.0)
    centroid = restraint.addGroup(list(range(n)), [1.0] * n)
    for i in range(n):
        group = restraint.addGroup([i], [1.0])
        restraint.addBond([centroid, group], [])
    restraint.setName("CentroidRestraint")
    system.addForce(restraint)
    return system


def double_well(n_particles: int = 4) -> openmm.System:
    """DW-n: the double-well pair potential `E = Σ_{i<j} 0.9 (d_ij − 4)^4 − 4 (d_ij − 4)^2`.

    Energy in kJ/mol with d in nm; every particle has mass 1 amu. The benchmark DW-4 is
    two-dimensional: OpenMM is 3D, so use positions `(n_particles, 3)` in nm with z = 0 and drop
    the z column. The energy is translation invariant (no restraint). At `REDUCED_TEMPERATURE`
    this is the kT = 1 benchmark.

    Raises TypeError / ValueError unless `n_particles` is an integer >= 2.
    """
    n = _check_n_particles(n_particles)
    system = _system_of(n)
    system.addForce(_pair_force("a*(r-d0)^4 + b*(r-d0)^2", n, "DoubleWell", a=0.9, b=-4.0, d0=4.0))
    return system
