"""`from_openmm` against OpenMM itself: every translated force, the fallback, and the errors.

Every comparison is against an independent evaluation written here: a Reference-platform
Context of the same System (float64, positions in nm), the ASE calculator of the same benchmark,
closed-form numpy energies, or central finite differences. The configurations come from this
file's own RNGs, never from the build-time self-check of `from_openmm`.
"""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import openmm
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openmm import unit

from iwsm_md.energies import TranslationMismatch, bonded, from_ase, from_openmm, openmm_system
from iwsm_md.energies.fallback import OpenMMFallbackTerm
from iwsm_md.energies.pair import PairTerm
from iwsm_md.potentials import (
    ASE_REDUCED_TEMPERATURE,
    REDUCED_TEMPERATURE,
    double_well,
    lj_cluster,
    lj_cluster_atoms,
)

RTOL = 1e-10  # relative agreement required with OpenMM Reference (float64)
T = 300.0  # kelvin, for the non-benchmark systems
KJ = unit.kilojoule_per_mole
NM = unit.nanometer


# ----------------------------------------------------------------------------- helpers
def new_system(n: int, masses=None) -> openmm.System:
    system = openmm.System()
    for i in range(n):
        system.addParticle(1.0 if masses is None else float(masses[i]))
    return system


def random_cluster(rng: np.random.Generator, n: int, dim: int = 3, dmin: float = 0.3, density: float = 1.5):
    """`(n, dim)` nm: uniform points in a box, no two closer than `dmin` (rejection sampling)."""
    side = density * dmin * n ** (1.0 / dim)
    points: list[np.ndarray] = []
    while len(points) < n:
        p = rng.uniform(0.0, side, dim)
        if all(np.linalg.norm(p - q) >= dmin for q in points):
            points.append(p)
    return np.array(points)


def random_batch(seed: int, batch: int, n: int, dim: int = 3, **kwargs) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([random_cluster(rng, n, dim, **kwargs) for _ in range(batch)])


def openmm_reference(system: openmm.System, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energies `(B,)` kJ/mol and forces `(B, n, 3)` kJ/mol/nm of positions `(B, n, d)` nm from a
    Reference-platform Context of `system` (z = 0 for d = 2)."""
    pos3 = np.pad(pos, ((0, 0), (0, 0), (0, 3 - pos.shape[-1])))
    context = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for x in pos3:
        context.setPositions(x * NM)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(KJ))
        forces.append(state.getForces(asNumpy=True).value_in_unit(KJ / NM))
    del context
    return np.array(energies), np.array(forces)


def torch_energies_forces(energy, pos: np.ndarray, dtype=torch.float64) -> tuple[np.ndarray, np.ndarray]:
    """Energy's outputs in OpenMM units: (E/kT)·kT in kJ/mol `(B,)`, −∇E in kJ/mol/nm `(B, n, d)`."""
    x = torch.tensor(pos.reshape(len(pos), -1), dtype=dtype, requires_grad=True)
    e = energy(x)
    (grad,) = torch.autograd.grad(e.sum(), x)
    return (e.detach().double() * energy.kT).numpy(), (-grad.double() * energy.kT).numpy().reshape(pos.shape)


def assert_close(e, e_ref, f, f_ref, rtol: float = RTOL, what: str = "") -> None:
    """Energies relative to max(|E_ref|, 1); forces of each configuration relative to max(max|F_ref|, 1)."""
    assert e.shape == e_ref.shape and f.shape == f_ref.shape
    e_err = np.abs(e - e_ref) / np.maximum(np.abs(e_ref), 1.0)
    assert e_err.max() <= rtol, f"{what} energies off by {e_err.max():.3g} (relative): {e} vs {e_ref}"
    f_scale = np.maximum(np.abs(f_ref).reshape(len(f_ref), -1).max(1), 1.0)
    f_err = (np.abs(f - f_ref).reshape(len(f), -1).max(1) / f_scale).max()
    assert f_err <= rtol, f"{what} forces off by {f_err:.3g} (relative)"


def assert_matches_openmm(energy, system: openmm.System, pos: np.ndarray, rtol: float = RTOL,
                          nonzero: bool = True) -> None:
    d = pos.shape[-1]
    e_ref, f_ref = openmm_reference(system, pos)
    if d == 2:  # a planar energy is the same only if OpenMM pushes nothing out of the plane
        assert np.abs(f_ref[..., 2]).max() <= rtol * max(np.abs(f_ref).max(), 1.0)
    e, f = torch_energies_forces(energy, pos)
    assert np.all(np.isfinite(e_ref))
    assert not nonzero or np.abs(e_ref).max() > 0, "degenerate reference: the test could not fail"
    assert_close(e, e_ref, f, f_ref[..., :d], rtol)


def build(system: openmm.System, **kwargs):
    """from_openmm at T, expecting a full translation (no fallback, no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        energy = from_openmm(system, T, **kwargs)
    assert energy.report.fallback == [] and energy.report.skipped == []
    assert len(energy.report.translated) == sum(
        type(f).__name__ != "CMMotionRemover" for f in system.getForces())
    assert all(err <= RTOL for err in energy.report.translated.values())
    return energy


def check_translation(system: openmm.System, pos: np.ndarray, nonzero: bool = True, **kwargs):
    energy = build(system, **kwargs)
    assert_matches_openmm(energy, system, pos, nonzero=nonzero)
    return energy


def terms_of(energy, kind):
    return [t for t in energy.terms if isinstance(t, kind)]


# ----------------------------------------------------------------------------- 1. benchmarks
def lj_numpy(x: np.ndarray) -> np.ndarray:
    """DESIGN.md's LJ-n, (B, n, 3) -> (B,)."""
    i, j = np.triu_indices(x.shape[1], 1)
    d = np.linalg.norm(x[:, i] - x[:, j], axis=-1)
    return 2 * np.sum(d**-12 - 2 * d**-6, 1) + 0.5 * np.sum((x - x.mean(1, keepdims=True)) ** 2, (1, 2))


def dw_numpy(x: np.ndarray) -> np.ndarray:
    """DESIGN.md's DW-n, (B, n, D) -> (B,)."""
    i, j = np.triu_indices(x.shape[1], 1)
    d = np.linalg.norm(x[:, i] - x[:, j], axis=-1)
    return np.sum(0.9 * (d - 4) ** 4 - 4 * (d - 4) ** 2, 1)


@pytest.fixture(scope="module")
def lj13():
    return from_openmm(lj_cluster(13), REDUCED_TEMPERATURE)


@pytest.fixture(scope="module")
def dw4():
    return from_openmm(double_well(4), REDUCED_TEMPERATURE, spatial_dim=2)


@pytest.mark.parametrize("n", [13, 55])
def test_lj_matches_openmm_numpy_and_ase(n):
    system = lj_cluster(n)
    energy = from_openmm(system, REDUCED_TEMPERATURE)
    assert energy.report.fallback == [] and len(energy.report.translated) == 2
    assert math.isclose(energy.kT, 1.0, rel_tol=1e-12)
    assert energy.dim == 3 * n and energy.length_unit == "nm"
    pos = random_batch(11 + n, 4, n, dmin=0.85, density=1.3)
    pos[1] *= 0.97  # one compressed configuration: repulsive energies
    assert_matches_openmm(energy, system, pos)

    e, f = torch_energies_forces(energy, pos)
    assert np.allclose(e, lj_numpy(pos), rtol=1e-10, atol=0)

    # ASE: the same numbers as Å and eV; E/kT agree when kT = 1 eV there and 1 kJ/mol here.
    atoms = lj_cluster_atoms(n)
    e_ase, f_ase = [], []
    for x in pos:
        atoms.positions = x
        e_ase.append(atoms.get_potential_energy())
        f_ase.append(atoms.get_forces())
    assert_close(e, np.array(e_ase), f, np.array(f_ase), what="vs ASE calculator")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ase_energy = from_ase(lj_cluster_atoms(n), ASE_REDUCED_TEMPERATURE)
    assert not any("fallback" in str(w.message) for w in record)
    assert math.isclose(ase_energy.kT, 1.0, rel_tol=1e-12)
    e2, f2 = torch_energies_forces(ase_energy, pos)
    assert_close(e2 / ase_energy.kT, e / energy.kT, f2 / ase_energy.kT, f / energy.kT, what="from_ase vs from_openmm")


def test_lj55_batch_spanning_several_chunks():
    """LJ-55's dense kernel works in chunks of the batch; a batch of 200 spans several."""
    system = lj_cluster(55)
    energy = from_openmm(system, REDUCED_TEMPERATURE)
    rng = np.random.default_rng(5)
    base = random_cluster(rng, 55, dmin=0.9, density=1.25)
    pos = base + rng.normal(0, 0.03, (200, 55, 3))
    assert_matches_openmm(energy, system, pos)


def test_dw4_planar_matches_openmm_and_closed_form(dw4):
    assert dw4.spatial_dim == 2 and dw4.dim == 8 and dw4.report.fallback == []
    pos = random_batch(21, 6, 4, dim=2, dmin=1.0, density=2.5)
    assert_matches_openmm(dw4, double_well(4), pos)
    e, _ = torch_energies_forces(dw4, pos)
    assert np.allclose(e, dw_numpy(pos), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- 2. finite differences
def finite_difference_forces(energy, x: np.ndarray, h: float) -> np.ndarray:
    """−∂(E/kT)/∂x by central differences, for one flattened configuration `x` (dim,)."""
    dim = x.shape[0]
    steps = np.eye(dim) * h
    xs = torch.tensor(np.concatenate([x + steps, x - steps]), dtype=torch.float64)
    with torch.no_grad():
        e = energy(xs).numpy()
    return -(e[:dim] - e[dim:]) / (2 * h)


@pytest.mark.parametrize("which", ["lj13", "dw4"])
def test_gradients_match_central_differences(which, request):
    energy = request.getfixturevalue(which)
    if which == "lj13":
        pos = random_batch(31, 3, 13, dmin=0.85, density=1.3)
    else:
        pos = random_batch(32, 3, 4, dim=2, dmin=1.0, density=2.5)
    _, f = torch_energies_forces(energy, pos)
    for x, fx in zip(pos, f):
        fd = finite_difference_forces(energy, x.ravel(), h=1e-5)
        scale = max(np.abs(fx).max(), 1.0)
        assert np.abs(fd - fx.ravel() / energy.kT).max() <= 1e-6 * scale


# ----------------------------------------------------------------------------- 3. a user's Morse System
def morse_system(n: int = 8, seed: int = 0) -> openmm.System:
    rng = np.random.default_rng(seed)
    system = new_system(n)
    morse = openmm.CustomNonbondedForce("D*(1-exp(-a*(r-r0)))^2 - shift; D=sqrt(D1*D2); a=0.5*(a1+a2); r0=r01+r02")
    morse.addGlobalParameter("shift", 0.7)
    for name in ("D", "a", "r0"):
        morse.addPerParticleParameter(name)
    for _ in range(n):
        morse.addParticle([rng.uniform(1, 5), rng.uniform(1, 3), rng.uniform(0.15, 0.25)])
    morse.setName("Morse")
    system.addForce(morse)
    bonds = openmm.HarmonicBondForce()
    for i, j in [(0, 1), (1, 2), (2, 3), (5, 7)]:
        bonds.addBond(i, j, rng.uniform(0.3, 0.5), rng.uniform(100, 1000))
    bonds.setName("Bonds")
    system.addForce(bonds)
    return system


def test_user_morse_system_translates_and_agrees():
    system = morse_system()
    energy = check_translation(system, random_batch(41, 5, 8, dmin=0.3))
    assert set(energy.report.translated) == {"CustomNonbondedForce 'Morse' (force 0)",
                                             "HarmonicBondForce 'Bonds' (force 1)"}
    assert energy.translation_invariant


# ----------------------------------------------------------------------------- 4. each force type
def nonbonded_system(n: int, method, seed: int, switching: bool = False, rf_dielectric: float | None = None):
    rng = np.random.default_rng(seed)
    system = new_system(n)
    force = openmm.NonbondedForce()
    force.setNonbondedMethod(method)
    for _ in range(n):
        force.addParticle(rng.uniform(-1, 1), rng.uniform(0.2, 0.35), rng.uniform(0.1, 1.0))
    force.addException(0, 1, 0.0, 1.0, 0.0)  # zeroed (excluded)
    force.addException(2, 5, 0.0, 0.3, 0.0)  # zeroed
    force.addException(1, 3, rng.uniform(-0.5, 0.5), 0.25, 0.4)  # scaled 1-4 style
    force.addException(4, 6, 0.0, 0.3, 0.7)  # LJ only
    force.addException(0, n - 1, 0.3, 0.0, 0.0)  # Coulomb only, a distant pair
    if method == openmm.NonbondedForce.CutoffNonPeriodic:
        force.setCutoffDistance(1.0)
        if rf_dielectric is not None:
            force.setReactionFieldDielectric(rf_dielectric)
        force.setUseSwitchingFunction(switching)
        force.setSwitchingDistance(0.8)
    force.setName("charged")
    system.addForce(force)
    return system


def test_nonbonded_nocutoff_with_exceptions():
    system = nonbonded_system(9, openmm.NonbondedForce.NoCutoff, seed=1)
    energy = check_translation(system, random_batch(51, 5, 9, dmin=0.25))
    assert len(terms_of(energy, PairTerm)) == 2  # all pairs but the exceptions, and the exceptions


@pytest.mark.parametrize("switching", [False, True])
@pytest.mark.parametrize("rf_dielectric", [None, 15.0])
def test_nonbonded_cutoff_nonperiodic_reaction_field(switching, rf_dielectric):
    system = nonbonded_system(10, openmm.NonbondedForce.CutoffNonPeriodic, seed=2, switching=switching,
                              rf_dielectric=rf_dielectric)
    pos = random_batch(52, 5, 10, dmin=0.25, density=3.0)  # box ~2.3 nm: pairs on both sides of rc
    d = np.linalg.norm(pos[:, :, None] - pos[:, None], axis=-1)
    assert (d > 1.0).any() and ((d > 0.8) & (d < 1.0)).any()
    assert (d[:, 1, 3] > 1.0).any() and (d[:, 0, 9] > 1.0).any()  # exceptions beyond the cutoff count
    check_translation(system, pos)


def test_custom_nonbonded_exclusions():
    n = 8
    rng = np.random.default_rng(3)
    system = new_system(n)
    force = openmm.CustomNonbondedForce("c1*c2/r + 4*e*((s/r)^12-(s/r)^6); e=sqrt(e1*e2); s=0.5*(s1+s2)")
    for name in ("c", "e", "s"):
        force.addPerParticleParameter(name)
    for _ in range(n):
        force.addParticle([rng.uniform(-1, 1), rng.uniform(0.1, 1), rng.uniform(0.2, 0.3)])
    for i, j in [(0, 1), (3, 2), (5, 7), (1, 6)]:
        force.addExclusion(i, j)
    system.addForce(force)
    check_translation(system, random_batch(53, 5, n, dmin=0.25))


@pytest.mark.parametrize("groups", [
    [([0, 1, 2], [3, 4, 5, 6])],  # disjoint
    [([0, 1, 2, 3], [2, 3, 4, 5])],  # one group whose sets overlap: pair (2, 3) once
    [([0, 1], [2, 3]), ([0], [2, 4]), ([5, 6], [5, 6])],  # (0, 2) in two groups: counted twice
    [([0, 1, 2], [0, 1, 2]), ([1, 2], [1, 2, 6])],  # self groups overlapping
], ids=["disjoint", "overlapping-sets", "pair-in-two-groups", "self-groups"])
def test_custom_nonbonded_interaction_groups(groups):
    n = 7
    rng = np.random.default_rng(4)
    system = new_system(n)
    force = openmm.CustomNonbondedForce("q1*q2/r + b*exp(-r)")
    force.addGlobalParameter("b", 2.5)
    force.addPerParticleParameter("q")
    for _ in range(n):
        force.addParticle([rng.uniform(0.5, 2)])
    for s1, s2 in groups:
        force.addInteractionGroup(s1, s2)
    force.addExclusion(1, 3)
    system.addForce(force)
    pos = random_batch(54, 4, n, dmin=0.3)
    check_translation(system, pos)


def test_interaction_group_pair_in_two_groups_counts_twice():
    """OpenMM's semantics, checked directly: a pair in two groups is computed twice."""
    system = new_system(3)
    force = openmm.CustomNonbondedForce("r")
    for _ in range(3):
        force.addParticle([])
    force.addInteractionGroup([0], [1])
    force.addInteractionGroup([1], [0, 2])
    system.addForce(force)
    pos = np.array([[[0, 0, 0], [1.0, 0, 0], [1.0, 2.0, 0]]])
    e_ref, _ = openmm_reference(system, pos)
    assert np.isclose(e_ref[0], 1 + 1 + 2)
    energy = build(system)
    e, _ = torch_energies_forces(energy, pos)
    assert np.isclose(e[0], 4.0, rtol=1e-12)


def test_custom_nonbonded_cutoff_with_switching():
    n = 9
    rng = np.random.default_rng(5)
    system = new_system(n)
    force = openmm.CustomNonbondedForce("a*(r-1.5)^2 + c/r; a=a1+a2; c=sqrt(c1*c2)")
    force.addPerParticleParameter("a")
    force.addPerParticleParameter("c")
    for _ in range(n):
        force.addParticle([rng.uniform(0.5, 1), rng.uniform(0.5, 1)])
    force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
    force.setCutoffDistance(1.2)
    force.setUseSwitchingFunction(True)
    force.setSwitchingDistance(0.9)
    force.addExclusion(0, 1)
    system.addForce(force)
    pos = random_batch(55, 5, n, dmin=0.3, density=3.0)
    d = np.linalg.norm(pos[:, :, None] - pos[:, None], axis=-1)
    assert ((d > 0.9) & (d < 1.2)).any() and (d > 1.2).any()
    check_translation(system, pos)


def custom_bond_system(n: int, bonds, seed: int) -> openmm.System:
    rng = np.random.default_rng(seed)
    system = new_system(n)
    force = openmm.CustomBondForce("k*(r-r0)^2 + c*exp(-r/l); c=2*cc")
    force.addGlobalParameter("l", 0.4)
    for name in ("k", "r0", "cc"):
        force.addPerBondParameter(name)
    for i, j in bonds:
        force.addBond(int(i), int(j), [rng.uniform(10, 100), rng.uniform(0.2, 0.6), rng.uniform(-1, 1)])
    system.addForce(force)
    return system


@pytest.mark.parametrize("kind", ["sparse", "dense", "duplicate"])
def test_custom_bond_paths(kind):
    n = 8
    if kind == "sparse":
        bonds, dense = [(0, 1), (2, 5), (7, 3)], False
    elif kind == "dense":
        bonds, dense = [(j, i) if (i + j) % 2 else (i, j) for i, j in zip(*np.triu_indices(n, 1))], True
    else:
        bonds, dense = [(0, 1), (2, 5), (0, 1), (1, 0), (4, 6)], False
    system = custom_bond_system(n, bonds, seed=6)
    energy = check_translation(system, random_batch(56, 5, n, dmin=0.25))
    (term,) = terms_of(energy, PairTerm)
    assert term.dense == dense and term.n_pairs == len(bonds)


def test_custom_external_force():
    n = 6
    rng = np.random.default_rng(7)
    system = new_system(n)
    force = openmm.CustomExternalForce("k*((x-x0)^2 + (y-y0)^2) + a*z^4 + sin(x*y) - w*z")
    force.addGlobalParameter("w", 1.3)
    for name in ("k", "x0", "y0", "a"):
        force.addPerParticleParameter(name)
    for i in [0, 2, 3, 5, 2]:  # particle 2 twice
        force.addParticle(i, [rng.uniform(1, 5), rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, 2)])
    system.addForce(force)
    energy = check_translation(system, random_batch(57, 5, n) - 0.5)
    assert not energy.translation_invariant


def test_harmonic_angle_force():
    n = 6
    rng = np.random.default_rng(8)
    system = new_system(n)
    force = openmm.HarmonicAngleForce()
    for a in [(0, 1, 2), (1, 2, 3), (5, 0, 4), (2, 4, 3)]:
        force.addAngle(*a, rng.uniform(1.5, 2.5), rng.uniform(50, 300))
    system.addForce(force)
    check_translation(system, random_batch(58, 5, n))


def test_custom_angle_force():
    n = 5
    rng = np.random.default_rng(9)
    system = new_system(n)
    force = openmm.CustomAngleForce("k*(theta-theta0)^2 + c*cos(theta)^3 + m")
    force.addGlobalParameter("m", 0.25)
    for name in ("k", "theta0", "c"):
        force.addPerAngleParameter(name)
    for a in [(0, 1, 2), (3, 1, 4), (2, 3, 4)]:
        force.addAngle(*a, [rng.uniform(10, 50), rng.uniform(1.5, 2.5), rng.uniform(-2, 2)])
    system.addForce(force)
    check_translation(system, random_batch(59, 5, n))


def test_periodic_torsion_with_phases():
    n = 6
    rng = np.random.default_rng(10)
    system = new_system(n)
    force = openmm.PeriodicTorsionForce()
    for t, per in [((0, 1, 2, 3), 1), ((1, 2, 3, 4), 2), ((2, 3, 4, 5), 3), ((5, 1, 0, 3), 1)]:
        force.addTorsion(*t, per, rng.uniform(0.3, 2.8), rng.uniform(2, 10))
    force.setName("torsions")
    system.addForce(force)
    check_translation(system, random_batch(60, 6, n))


def test_custom_torsion_force():
    n = 5
    rng = np.random.default_rng(11)
    system = new_system(n)
    force = openmm.CustomTorsionForce(
        "k*dtheta^2 + c*sin(theta); dtheta = min(dt, 2*pi-dt); dt = abs(theta-theta0); pi = 3.141592653589793")
    for name in ("k", "theta0", "c"):
        force.addPerTorsionParameter(name)
    for t in [(0, 1, 2, 3), (1, 2, 3, 4), (4, 0, 1, 2)]:
        force.addTorsion(*t, [rng.uniform(1, 5), rng.uniform(-3, 3), rng.uniform(-1, 1)])
    system.addForce(force)
    check_translation(system, random_batch(61, 5, n))


def test_custom_compound_bond_force():
    n = 7
    rng = np.random.default_rng(12)
    system = new_system(n)
    force = openmm.CustomCompoundBondForce(
        4, "k*(distance(p1,p2)-d0)^2 + a*angle(p1,p2,p3) + b*cos(2*dihedral(p1,p2,p3,p4)-phi) "
           "+ x1*y2 - z1*z2 + g*distance(p4,p1)")
    force.addGlobalParameter("g", 0.3)
    for name in ("k", "d0", "a", "b", "phi"):
        force.addPerBondParameter(name)
    for b in [(0, 1, 2, 3), (3, 4, 5, 6), (6, 2, 0, 4)]:
        force.addBond(b, [rng.uniform(10, 50), rng.uniform(0.2, 0.5), rng.uniform(-1, 1), rng.uniform(1, 3),
                          rng.uniform(0.2, 2.5)])
    system.addForce(force)
    check_translation(system, random_batch(62, 5, n) - 0.4)


@pytest.mark.parametrize("explicit_weights", [True, False])
def test_custom_centroid_bond_force(explicit_weights):
    n = 8
    rng = np.random.default_rng(13)
    masses = rng.uniform(1, 20, n)
    system = new_system(n, masses)
    force = openmm.CustomCentroidBondForce(3, "k*(distance(g1,g2)-d0)^2 + c*angle(g1,g2,g3) + 0.1*x1*z3")
    for name in ("k", "d0", "c"):
        force.addPerBondParameter(name)
    groups = [[0, 1, 2], [3, 4], [5, 6, 7], [2, 5]]
    for g in groups:
        if explicit_weights:
            force.addGroup(g, list(rng.uniform(0.5, 3, len(g))))
        else:
            force.addGroup(g)
    force.addBond([0, 1, 2], [rng.uniform(1, 10), 0.5, rng.uniform(-1, 1)])
    force.addBond([3, 0, 1], [rng.uniform(1, 10), 0.3, rng.uniform(-1, 1)])
    system.addForce(force)
    check_translation(system, random_batch(63, 5, n))


def test_custom_centroid_default_weights_are_masses():
    """Independent of OpenMM: a 2-group restraint on the mass-weighted centres, by hand."""
    masses = np.array([1.0, 9.0, 4.0])
    system = new_system(3, masses)
    force = openmm.CustomCentroidBondForce(2, "distance(g1,g2)^2")
    force.addGroup([0, 1])
    force.addGroup([2])
    force.addBond([0, 1], [])
    system.addForce(force)
    energy = build(system)
    pos = random_batch(64, 3, 3)
    com = (pos[:, 0] * 1.0 + pos[:, 1] * 9.0) / 10.0
    e, _ = torch_energies_forces(energy, pos)
    assert np.allclose(e, ((com - pos[:, 2]) ** 2).sum(-1), rtol=1e-12)


def test_straight_angles_and_coincident_points():
    """Where a geometric quantity has no gradient (straight angles, coincident points) OpenMM's
    force is zero, and so must the translation's be: not NaN (straight chains are common inputs)."""
    system = new_system(5)
    angles = openmm.HarmonicAngleForce()
    angles.addAngle(0, 1, 2, math.pi, 100.0)  # straight, at its minimum
    angles.addAngle(1, 0, 2, 2.0, 100.0)  # folded (theta = 0)
    system.addForce(angles)
    custom = openmm.CustomAngleForce("k*cos(theta)")
    custom.addPerAngleParameter("k")
    custom.addAngle(2, 1, 0, [3.0])
    system.addForce(custom)
    compound = openmm.CustomCompoundBondForce(2, "distance(p1,p2)^2 + x1*z2")
    compound.addBond([3, 4], [])
    system.addForce(compound)
    restraint = openmm.CustomCentroidBondForce(2, "0.5*k*distance(g1,g2)^2")
    restraint.addGlobalParameter("k", 4.0)
    restraint.addGroup([0, 2])
    restraint.addGroup([1])
    restraint.addBond([0, 1], [])
    system.addForce(restraint)
    pos = np.array([[[0, 0, 0], [0.5, 0, 0], [1.0, 0, 0], [0.25, 0.5, 0.5], [0.25, 0.5, 0.5]],
                    [[0, 0, 0], [0, 0.75, 0], [0, 1.5, 0], [1, 1, 1], [1, 1, 1]]])
    energy = check_translation(system, pos)
    _, f = torch_energies_forces(energy, pos)
    assert np.all(np.isfinite(f))


def test_parameter_names_that_look_like_internal_variables():
    """User names are the user's: a bond parameter called u, or parameters called x1, y2, z3, p1
    in forces whose expressions have no coordinate variables, must not be taken for the
    translation's own variables (squared distance, coordinates, points)."""
    system = new_system(5)
    bond = openmm.CustomBondForce("k*(r-u)^2")
    bond.addPerBondParameter("k")
    bond.addPerBondParameter("u")
    bond.addBond(0, 1, [10.0, 0.3])
    bond.addBond(2, 4, [5.0, 0.6])
    system.addForce(bond)
    ext = openmm.CustomExternalForce("k*(x-x1)^2 + y*z1")
    ext.addPerParticleParameter("k")
    ext.addPerParticleParameter("x1")
    ext.addPerParticleParameter("z1")
    ext.addParticle(0, [10.0, 0.3, 2.0])
    ext.addParticle(3, [4.0, -0.5, -1.0])
    system.addForce(ext)
    angle = openmm.CustomAngleForce("x1*(theta-y2)^2 + p1")
    for name in ("x1", "y2", "p1"):
        angle.addPerAngleParameter(name)
    angle.addAngle(0, 1, 2, [10.0, 1.3, 0.7])
    system.addForce(angle)
    torsion = openmm.CustomTorsionForce("z3*cos(theta-p1) + x4")
    for name in ("z3", "p1", "x4"):
        torsion.addPerTorsionParameter(name)
    torsion.addTorsion(0, 1, 2, 3, [10.0, 1.3, 0.2])
    system.addForce(torsion)
    check_translation(system, random_batch(78, 4, 5))


def test_expression_functions_and_definitions():
    """select/step/delta/min/max/abs/floor and friends, and `;` definitions, in pair and bonded forces."""
    n = 6
    rng = np.random.default_rng(14)
    system = new_system(n)
    bond = openmm.CustomBondForce(
        "select(step(r-r0), k*(r-r0)^2, k2*cosh(r-r0)) + max(r, 0.6) - min(r^2, 0.3) + delta(r-100) "
        "+ abs(r-1) + floor(3*r) + erf(r) + atan(r) + sqrt(r) + log(r) + recip(r)*square(r0) + cube(r)"
        "; k2 = 2*k")
    bond.addPerBondParameter("k")
    bond.addPerBondParameter("r0")
    for i, j in [(0, 1), (1, 2), (3, 4), (4, 5), (0, 5)]:
        bond.addBond(i, j, [rng.uniform(1, 10), rng.uniform(0.3, 0.8)])
    system.addForce(bond)
    pair = openmm.CustomNonbondedForce("u + v; u = a*tanh(r - c); v = -b^2/r^3 * select(q1-q2, 1, 2); "
                                       "a = 1.5; b = 0.2; c = 0.7")
    pair.addPerParticleParameter("q")
    for i in range(n):
        pair.addParticle([float(i % 3)])
    system.addForce(pair)
    ext = openmm.CustomExternalForce("step(x) * x^2 + (1-step(x)) * atan2(y, z) + 2^-x")
    for i in range(n):
        ext.addParticle(i, [])
    system.addForce(ext)
    check_translation(system, random_batch(65, 6, n) - 0.6)


def test_pairs_exactly_at_the_cutoff_are_dropped():
    """OpenMM computes a pair only for r < rc: at r == rc (exact in floating point) it is dropped.
    (Sparse pair lists compute r exactly as OpenMM does; the dense kernel's Gram-matrix distances
    may differ from it in the last bit, so only the sparse path can be tested at the boundary.)"""
    n = 8
    system = new_system(n)
    force = openmm.CustomNonbondedForce("1/r + 2")
    for _ in range(n):
        force.addParticle([])
    force.addInteractionGroup([1], [2, 5])
    force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
    force.setCutoffDistance(1.0)
    system.addForce(force)
    pos = np.round(random_batch(76, 2, n, dmin=0.3) * 64) / 64
    pos[:, 1] = pos[:, 2] + np.array([0.0, 0.0, 1.0])  # |x1 - x2| == 1.0 exactly
    assert np.all(np.linalg.norm(pos[:, 1] - pos[:, 2], axis=-1) == 1.0)
    energy = check_translation(system, pos)
    assert not terms_of(energy, PairTerm)[0].dense


def test_empty_batch(lj13):
    system = morse_system()
    lj8 = lj_cluster(8)  # kept alive: its forces belong to it
    system.addForce(openmm.XmlSerializer.clone(lj8.getForce(1)))  # + a centroid (bonded) term
    energy = build(system)
    for e in (energy, lj13):
        x = torch.zeros(0, e.dim, dtype=torch.float64)
        energies, forces = e.energy_and_forces(x)
        assert energies.shape == (0,) and forces.shape == (0, e.dim)


def test_forces_without_terms_or_without_position_dependence():
    """Empty forces and constant energies: energies agree, forces are zero (not an autograd error)."""
    n = 4
    system = new_system(n)
    system.addForce(openmm.CustomBondForce("2*(r-1)^2"))  # no bonds
    system.addForce(openmm.HarmonicAngleForce())  # no angles
    system.addForce(openmm.HarmonicBondForce())  # no bonds
    system.addForce(openmm.PeriodicTorsionForce())  # no torsions
    constant = openmm.CustomExternalForce("k + c")
    constant.addGlobalParameter("c", 0.5)
    constant.addPerParticleParameter("k")
    constant.addParticle(0, [2.0])
    constant.addParticle(3, [-7.0])
    system.addForce(constant)
    bond = openmm.CustomBondForce("3")
    bond.addBond(0, 1, [])
    system.addForce(bond)
    energy = build(system)
    pos = random_batch(77, 3, n)
    e, f = torch_energies_forces(energy, pos)
    e_ref, f_ref = openmm_reference(system, pos)
    assert np.allclose(e, 2.5 - 6.5 + 3.0, rtol=1e-12) and np.allclose(e_ref, -1.0, rtol=1e-12)
    assert np.all(f == 0) and np.all(f_ref == 0)
    only_empty = new_system(n)
    only_empty.addForce(openmm.CustomBondForce("2*(r-1)^2"))
    e, f = torch_energies_forces(build(only_empty), pos)
    assert np.all(e == 0) and np.all(f == 0)


# ----------------------------------------------------------------------------- 5. fallback
def gbsa_system(n: int = 6, seed: int = 15) -> openmm.System:
    rng = np.random.default_rng(seed)
    system = new_system(n)
    nb = openmm.NonbondedForce()
    gb = openmm.GBSAOBCForce()
    for _ in range(n):
        q = rng.uniform(-0.5, 0.5)
        nb.addParticle(q, 0.3, 0.5)
        gb.addParticle(q, rng.uniform(0.15, 0.2), 0.8)
    gb.setName("solvent")
    system.addForce(nb)
    system.addForce(gb)
    bonds = openmm.HarmonicBondForce()
    bonds.addBond(0, 1, 0.3, 100.0)
    system.addForce(bonds)
    return system


def tabulated_system(n: int = 5) -> openmm.System:
    system = new_system(n)
    table = openmm.CustomNonbondedForce("4*f(r) + 0.1*r")
    table.addTabulatedFunction("f", openmm.Continuous1DFunction(list(np.exp(-np.linspace(0, 3, 40))), 0.0, 3.0))
    for _ in range(n):
        table.addParticle([])
    table.setName("tabulated")
    system.addForce(table)
    lj = openmm.CustomNonbondedForce("(0.3/r)^12")
    for _ in range(n):
        lj.addParticle([])
    system.addForce(lj)
    return system


@pytest.mark.parametrize("make, name", [(gbsa_system, "GBSAOBCForce 'solvent' (force 1)"),
                                        (tabulated_system, "CustomNonbondedForce 'tabulated' (force 0)")])
def test_fallback_forces_named_and_total_agrees(make, name):
    system = make()
    n = system.getNumParticles()
    with pytest.warns(UserWarning, match=re.escape(name) + r".*fallback"):
        energy = from_openmm(system, T, n_workers=1)
    assert energy.report.fallback == [name]
    assert name not in energy.report.translated
    assert len(energy.report.translated) == system.getNumForces() - 1
    (fallback,) = terms_of(energy, OpenMMFallbackTerm)
    assert fallback.n_workers == 1
    assert_matches_openmm(energy, system, random_batch(66, 5, n, dmin=0.35))


# ----------------------------------------------------------------------------- 6. conventions
def test_cmmotionremover_skipped_and_constraints_warn_once():
    system = morse_system()
    system.addForce(openmm.CMMotionRemover())
    system.addConstraint(0, 1, 0.4)
    system.addConstraint(2, 3, 0.4)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        energy = from_openmm(system, T)
    messages = [str(w.message) for w in record]
    assert sum("constraint" in m for m in messages) == 1, messages
    assert [w.category for w in record] == [UserWarning]
    assert energy.report.skipped == ["CMMotionRemover 'CMMotionRemover' (force 2)"]
    assert energy.report.fallback == [] and len(energy.report.translated) == 2
    assert_matches_openmm(energy, system, random_batch(67, 3, 8))  # OpenMM: CMMotionRemover has no energy


def test_float32_input(lj13):
    pos = random_batch(68, 5, 13, dmin=0.85, density=1.3)
    x32 = torch.tensor(pos.reshape(5, -1), dtype=torch.float32, requires_grad=True)
    e32 = lj13(x32)
    (g32,) = torch.autograd.grad(e32.sum(), x32)
    assert e32.dtype == torch.float32 and g32.dtype == torch.float32
    e64, f64 = torch_energies_forces(lj13, pos)
    assert np.allclose(e32.detach().numpy(), e64, rtol=1e-4, atol=1e-4)
    assert np.abs(-g32.numpy() - f64.reshape(5, -1)).max() <= 1e-4 * np.abs(f64).max()


def test_float32_bonded_and_sparse_terms():
    system = morse_system()
    torsion = openmm.PeriodicTorsionForce()
    torsion.addTorsion(0, 1, 2, 3, 2, 0.5, 3.0)
    system.addForce(torsion)
    energy = build(system)
    pos = random_batch(69, 4, 8)
    e64, _ = torch_energies_forces(energy, pos)
    e32 = energy(torch.tensor(pos.reshape(4, -1), dtype=torch.float32))
    assert e32.dtype == torch.float32
    assert np.allclose(e32.numpy() * energy.kT, e64, rtol=1e-5, atol=1e-4)


def test_batch_equals_one_by_one(lj13, dw4):
    for energy, pos in [(lj13, random_batch(70, 9, 13, dmin=0.85, density=1.3)),
                        (dw4, random_batch(71, 9, 4, dim=2, dmin=1.0, density=2.5))]:
        x = torch.tensor(pos.reshape(len(pos), -1))
        together = energy(x)
        alone = torch.cat([energy(x[i:i + 1]) for i in range(len(x))])
        assert torch.allclose(together, alone, rtol=1e-12, atol=0)
        e_all, f_all = energy.energy_and_forces(x)
        e_one, f_one = energy.energy_and_forces(x[4:5])
        assert torch.allclose(e_all[4:5], e_one, rtol=1e-12) and torch.allclose(f_all[4:5], f_one, rtol=1e-10)


def test_translation_invariance_flag(lj13, dw4):
    assert lj13.translation_invariant and dw4.translation_invariant
    system = lj_cluster(5)
    ext = openmm.CustomExternalForce("0.1*x^2")
    ext.addParticle(0, [])
    system.addForce(ext)
    assert not from_openmm(system, REDUCED_TEMPERATURE).translation_invariant
    # and the flag is true to the energy: a shift changes nothing for LJ-13
    pos = torch.tensor(random_batch(72, 3, 13, dmin=0.85, density=1.3).reshape(3, -1))
    shift = torch.tensor([0.3, -1.2, 2.0]).repeat(13)
    assert torch.allclose(lj13(pos + shift), lj13(pos), rtol=1e-10)


def test_temperature_scaling():
    system = morse_system()
    pos = torch.tensor(random_batch(73, 2, 8).reshape(2, -1))
    e300 = from_openmm(system, 300.0)(pos)
    e600 = from_openmm(system, 600.0 * unit.kelvin)(pos)
    assert torch.allclose(e300, 2 * e600, rtol=1e-12)
    assert math.isclose(from_openmm(system, 300 * unit.kelvin).kT, 300 * 8.314462618e-3, rel_tol=1e-9)


# ----------------------------------------------------------------------------- 7. bad input
@pytest.mark.parametrize("bad, match", [
    (lambda x: x.index_fill(1, torch.tensor([3]), float("nan")), "NaN or inf"),
    (lambda x: x.index_fill(1, torch.tensor([0]), float("inf")), "NaN or inf"),
    (lambda x: x.index_fill(1, torch.tensor([5]), -float("inf")), "NaN or inf"),
    (lambda x: x[:, :-1], r"shape \(batch, 39\)"),
    (lambda x: torch.cat([x, x[:, :3]], 1), r"shape \(batch, 39\)"),
    (lambda x: x[0], r"shape \(batch, 39\)"),
    (lambda x: x.reshape(2, 13, 3), r"shape \(batch, 39\)"),
    (lambda x: x.to(torch.int64), "floating point"),
])
def test_bad_positions(lj13, bad, match):
    x = torch.tensor(random_batch(74, 2, 13, dmin=0.85, density=1.3).reshape(2, -1))
    with pytest.raises(ValueError, match=match):
        lj13(bad(x))


def test_positions_not_a_tensor(lj13):
    with pytest.raises(TypeError, match="torch.Tensor"):
        lj13(np.zeros((1, 39)))


def periodic_pme() -> openmm.System:
    system = new_system(3)
    force = openmm.NonbondedForce()
    force.setNonbondedMethod(openmm.NonbondedForce.PME)
    for _ in range(3):
        force.addParticle(0.1, 0.3, 0.5)
    force.setName("pme")
    system.addForce(force)
    return system


def periodic_custom() -> openmm.System:
    system = new_system(3)
    force = openmm.CustomNonbondedForce("1/r")
    force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    for _ in range(3):
        force.addParticle([])
    force.setName("box")
    system.addForce(force)
    return system


def virtual_site_system() -> openmm.System:
    system = morse_system(4)
    system.setVirtualSite(3, openmm.TwoParticleAverageSite(0, 1, 0.5, 0.5))
    return system


def only_cmm() -> openmm.System:
    system = new_system(4)
    system.addForce(openmm.CMMotionRemover())
    return system


@pytest.mark.parametrize("make, error, match", [
    (lambda: openmm.System(), ValueError, "no particles"),
    (only_cmm, ValueError, "no forces that carry energy"),
    (lambda: new_system(3), ValueError, "no forces that carry energy"),
    (periodic_pme, ValueError, r"periodic.*NonbondedForce 'pme'"),
    (periodic_custom, ValueError, r"periodic.*CustomNonbondedForce 'box'"),
    (virtual_site_system, ValueError, r"virtual sites \(particles \[3\]\)"),
    (lambda: "not a system", TypeError, "openmm.System"),
    (lambda: lj_cluster_atoms(3), TypeError, "openmm.System"),
], ids=["empty", "only-cmm", "no-forces", "pme", "cutoff-periodic", "virtual-site", "string", "atoms"])
def test_bad_systems(make, error, match):
    with pytest.raises(error, match=match):
        from_openmm(make(), T)


@pytest.mark.parametrize("temperature, error, match", [
    (None, TypeError, "temperature is required"),
    (0.0, ValueError, "positive"),
    (-10.0, ValueError, "positive"),
    (float("nan"), ValueError, "finite"),
    (float("inf"), ValueError, "finite"),
    (300 * unit.nanometer, ValueError, "expected a temperature"),
    (300 * KJ, ValueError, "expected a temperature"),
])
def test_bad_temperature(temperature, error, match):
    with pytest.raises(error, match=match):
        from_openmm(lj_cluster(3), temperature)


@pytest.mark.parametrize("spatial_dim", [4, 1, 0])
def test_bad_spatial_dim(spatial_dim):
    with pytest.raises(ValueError, match="spatial_dim must be 2 or 3"):
        from_openmm(lj_cluster(3), T, spatial_dim=spatial_dim)


# ----------------------------------------------------------------------------- 8. TranslationMismatch
def test_wrong_coulomb_constant_is_caught(monkeypatch):
    system = nonbonded_system(8, openmm.NonbondedForce.NoCutoff, seed=16)
    monkeypatch.setattr(openmm_system, "ONE_4PI_EPS0", 138.9)
    with pytest.raises(TranslationMismatch, match=r"NonbondedForce 'charged' \(force 0\)"):
        from_openmm(system, T)


def test_wrong_dihedral_sign_is_caught_here_and_by_the_build_check(monkeypatch):
    """A mirrored dihedral is invisible to a phase-free cosine: the nonzero phases catch it,
    both in from_openmm's own check and in this file's comparison."""
    system = new_system(6)
    force = openmm.PeriodicTorsionForce()
    force.addTorsion(0, 1, 2, 3, 1, 1.1, 5.0)
    force.addTorsion(2, 3, 4, 5, 2, 0.4, 3.0)
    force.setName("torsions")
    system.addForce(force)
    monkeypatch.setitem(bonded._GEOMETRY, "dihedral", lambda *p: -bonded.dihedral(*p))
    with pytest.raises(TranslationMismatch, match=r"PeriodicTorsionForce 'torsions'"):
        from_openmm(system, T)
    wrong = from_openmm(system, T, check=False)
    with pytest.raises(AssertionError, match="energies off"):
        assert_matches_openmm(wrong, system, random_batch(75, 3, 6))


def test_missing_switching_is_caught(monkeypatch):
    n = 6
    system = new_system(n)
    force = openmm.CustomNonbondedForce("1/r")
    for _ in range(n):
        force.addParticle([])
    force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
    force.setCutoffDistance(1.0)
    force.setUseSwitchingFunction(True)
    force.setSwitchingDistance(0.3)
    force.setName("switched")
    system.addForce(force)
    monkeypatch.setattr(openmm_system, "_switched", lambda energy, force, method: energy)
    with pytest.raises(TranslationMismatch, match=r"CustomNonbondedForce 'switched'"):
        from_openmm(system, T, seed=3)


def test_wrong_scale_of_a_term_is_caught(monkeypatch):
    real = openmm_system._TRANSLATORS["HarmonicBondForce"]

    def off_by_a_little(force, n, scale, masses):
        return real(force, n, scale * (1 + 1e-8), masses)

    monkeypatch.setitem(openmm_system._TRANSLATORS, "HarmonicBondForce", off_by_a_little)
    with pytest.raises(TranslationMismatch, match=r"HarmonicBondForce 'Bonds' \(force 1\)"):
        from_openmm(morse_system(), T)


# ----------------------------------------------------------------------------- 9. property test
PAIR_TEMPLATES = [
    "A*exp(-B*r); A=sqrt(a1*a2); B=0.5*(b1+b2)",
    "4*eps*((s/r)^12-(s/r)^6); eps=sqrt(a1*a2); s=0.1*(b1+b2)",
    "a1*a2/r + b1*b2*r^2",
    "min(a1,a2)*tanh(r) + max(b1,b2)/(1+r^2)",
    "select(step(r-c), (a1+a2)*(r-c)^2, -b1*b2*cos(r)); c = 0.6",  # OpenMM needs symmetric expressions
]
BOND_TEMPLATES = [
    "k*(r-r0)^2",
    "k*(1-exp(-2*(r-r0)))^2",
    "k*cos(r/r0) + r0*log(r)",
    "k*erf(r-r0) - k*r0/r",
]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 7),
    pair_template=st.sampled_from(PAIR_TEMPLATES),
    bond_template=st.sampled_from(BOND_TEMPLATES),
    cutoff=st.sampled_from([None, 1.0]),
    n_bonds=st.integers(0, 12),
    n_exclusions=st.integers(0, 3),
    n_groups=st.integers(0, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_small_systems_agree(n, pair_template, bond_template, cutoff, n_bonds, n_exclusions, n_groups,
                                    seed):
    rng = np.random.default_rng(seed)
    system = new_system(n)
    pair = openmm.CustomNonbondedForce(pair_template)
    pair.addPerParticleParameter("a")
    pair.addPerParticleParameter("b")
    for _ in range(n):
        pair.addParticle([rng.uniform(0.2, 2.0), rng.uniform(0.5, 2.0)])
    all_pairs = list(zip(*np.triu_indices(n, 1)))
    for k in rng.permutation(len(all_pairs))[:n_exclusions]:
        pair.addExclusion(int(all_pairs[k][0]), int(all_pairs[k][1]))
    for _ in range(n_groups):  # random, possibly overlapping, interaction groups
        pair.addInteractionGroup(*[[int(i) for i in np.flatnonzero(rng.random(n) < 0.6)] for _ in range(2)])
    if cutoff is not None:
        pair.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
        pair.setCutoffDistance(cutoff)
        pair.setUseSwitchingFunction(bool(rng.integers(2)))
        pair.setSwitchingDistance(0.7)
    system.addForce(pair)
    bond = openmm.CustomBondForce(bond_template)
    bond.addPerBondParameter("k")
    bond.addPerBondParameter("r0")
    for _ in range(n_bonds):
        i, j = rng.choice(n, 2, replace=False)
        bond.addBond(int(i), int(j), [rng.uniform(-5, 20), rng.uniform(0.2, 0.8)])
    system.addForce(bond)
    pos = random_batch(int(rng.integers(2**31)), 3, n, dmin=0.3, density=2.5)
    check_translation(system, pos, nonzero=False, seed=int(rng.integers(100)))
