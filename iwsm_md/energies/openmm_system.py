"""`from_openmm`: an OpenMM System becomes a batched torch `Energy`.

The System is the specification, translated torch code is the engine. Each force is
translated into pair terms (`pair.PairTerm`) or bonded terms (`bonded.BondedTerm`) by reading
its parameters and parsing its energy expression. The translation checks itself on build
against OpenMM's Reference platform (float64) and raises if any force disagrees. Forces it
cannot translate run through the exact per-configuration OpenMM fallback
(`fallback.OpenMMFallbackTerm`), with a warning.

Units are converted here and nowhere else: positions in nm, energies divided by kT = R·T.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import openmm
import openmm.unit as unit
import torch

from iwsm_md.energies import expression as ex
from iwsm_md.energies.base import TermEnergy
from iwsm_md.energies.bonded import BondedTerm
from iwsm_md.energies.check import compare_terms
from iwsm_md.energies.fallback import OpenMMFallbackTerm
from iwsm_md.energies.pair import PairTerm
from iwsm_md.energies.units import MOLAR_GAS_CONSTANT, kelvin

# OpenMM's Coulomb constant 1/(4π ε0) in kJ mol⁻¹ nm e⁻² (its SimTKOpenMMRealType.h).
ONE_4PI_EPS0 = 138.93545764438198
# OpenMM force types that carry no energy.
_NO_ENERGY = ("CMMotionRemover", "AndersenThermostat")


class NotTranslatable(Exception):
    """A force (or a feature of it) that has no torch translation; it goes to the fallback."""


@dataclass
class TranslationReport:
    """What `from_openmm` did with each force: translated (with the measured agreement with
    OpenMM Reference), sent to the fallback, or skipped."""

    translated: dict[str, float] = field(default_factory=dict)  # force -> max relative error
    fallback: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def from_openmm(
    system: openmm.System,
    temperature,
    spatial_dim: int = 3,
    *,
    n_workers: int | None = None,
    check: bool = True,
    seed: int = 0,
) -> TermEnergy:
    """Translate an OpenMM System into a batched torch `Energy` returning E/kT.

    Args:
        system: an `openmm.System` of N particles in open space (no periodic forces, no
            virtual sites; constraints are ignored with a warning: the sampler draws
            unconstrained coordinates).
        temperature: kelvin (number or openmm Quantity); energies are divided by R·T.
        spatial_dim: 3, or 2 for planar systems whose z coordinates are zero.
        n_workers: processes of the OpenMM fallback for untranslatable forces (default: CPUs).
        check: compare every translated force with OpenMM's Reference platform on random
            configurations (float64) and raise `TranslationMismatch` above relative 1e-10.
        seed: seed of the check configurations.

    Returns:
        An Energy over positions `(batch, N*spatial_dim)` in nm, with `length_unit="nm"`, a
        `report` (`TranslationReport`) and `kT` (kJ/mol).
    """
    if not isinstance(system, openmm.System):
        raise TypeError(f"expected an openmm.System, got {type(system).__name__}")
    t_kelvin = kelvin(temperature)
    if spatial_dim not in (2, 3):
        raise ValueError(f"spatial_dim must be 2 or 3, got {spatial_dim}")
    n = system.getNumParticles()
    if n == 0:
        raise ValueError("the System has no particles")
    virtual = [i for i in range(n) if system.isVirtualSite(i)]
    if virtual:
        raise ValueError(f"the System has virtual sites (particles {virtual[:10]}): their positions follow from "
                         "other particles, which a sampler of free coordinates cannot respect; remove them")
    periodic = [_describe(f, k) for k, f in enumerate(system.getForces()) if f.usesPeriodicBoundaryConditions()]
    if periodic:
        raise ValueError(f"periodic forces {periodic}: iwsm_md samples clusters in open space; use NoCutoff or "
                         "CutoffNonPeriodic methods (bonded forces: setUsesPeriodicBoundaryConditions(False))")
    barostats = [_describe(f, k) for k, f in enumerate(system.getForces()) if "Barostat" in type(f).__name__]
    if barostats:  # no energy of their own, but they only make sense with a periodic box
        raise ValueError(f"barostats {barostats} need a periodic box: iwsm_md samples clusters in open space at "
                         "fixed temperature; remove them (System.removeForce)")
    if system.getNumConstraints():
        warnings.warn(f"the System has {system.getNumConstraints()} constraints; they are not part of the energy "
                      "and the sampler draws unconstrained coordinates", UserWarning, stacklevel=2)
    kT = MOLAR_GAS_CONSTANT * t_kelvin
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n)])
    report = TranslationReport()
    terms, translated, untranslated = [], [], []
    for k, force in enumerate(system.getForces()):
        name = _describe(force, k)
        if type(force).__name__ in _NO_ENERGY:
            report.skipped.append(name)
            continue
        translate = _TRANSLATORS.get(type(force).__name__)
        try:
            if translate is None:
                raise NotTranslatable(f"no translation of {type(force).__name__}")
            force_terms = translate(force, n, 1.0 / kT, masses)
        except NotTranslatable:
            untranslated.append((name, force))
            report.fallback.append(name)
            continue
        terms.extend(force_terms)
        translated.append((name, force, force_terms))
    if not translated and not untranslated:
        raise ValueError("the System has no forces that carry energy")
    if check:
        configs = _check_configurations(n, spatial_dim, seed)
        for name, force, force_terms in translated:
            report.translated[name] = _check_force(name, force, force_terms, masses, configs[..., :spatial_dim], kT)
    if untranslated:
        sub = openmm.System()
        for m in masses:
            sub.addParticle(m)
        for _, force in untranslated:
            sub.addForce(openmm.XmlSerializer.clone(force))
        terms.append(OpenMMFallbackTerm(sub, kT, spatial_dim, [nm for nm, _ in untranslated], n_workers=n_workers))
    energy = TermEnergy(terms, n, spatial_dim, length_unit="nm",
                        translation_invariant=_is_translation_invariant(terms, n, spatial_dim, seed))
    energy.report = report
    energy.kT = kT
    return energy


def _describe(force: openmm.Force, index: int) -> str:
    return f"{type(force).__name__} '{force.getName()}' (force {index})"


# ----------------------------------------------------------------------------- self-check
def _check_configurations(n: int, spatial_dim: int, seed: int, count: int = 4) -> np.ndarray:
    """Jittered lattice configurations `(count, n, 3)` in nm (z = 0 for planar systems),
    spacings 0.4-1.5 nm: no overlaps, finite energies for ordinary force fields."""
    rng = np.random.default_rng(seed)
    side = math.ceil(n ** (1 / spatial_dim))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * spatial_dim, indexing="ij"), -1).reshape(-1, spatial_dim)
    out = np.zeros((count, n, 3))
    for c in range(count):
        spacing = rng.uniform(0.4, 1.5)
        sites = grid[rng.permutation(len(grid))[:n]] * spacing
        out[c, :, :spatial_dim] = sites + rng.uniform(-0.1, 0.1, sites.shape) * spacing
    return out


def _reference_energies(force: openmm.Force, masses: np.ndarray, configs: np.ndarray):
    """Energies `(count,)` kJ/mol and forces `(count, n, 3)` kJ/mol/nm of one force, OpenMM Reference."""
    system = openmm.System()
    for m in masses:
        system.addParticle(m)
    system.addForce(openmm.XmlSerializer.clone(force))
    context = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for x in configs:
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return np.array(energies), np.array(forces)


def _check_force(name, force, force_terms, masses, configs, kT) -> float:
    """Max relative error of a translated force against OpenMM Reference, on configurations
    `(count, n, spatial_dim)` in nm."""
    d = configs.shape[-1]
    e_ref, f_ref = _reference_energies(force, masses, np.pad(configs, ((0, 0), (0, 0), (0, 3 - d))))
    return compare_terms(name, force_terms, configs, e_ref, f_ref[..., :d], kT, "OpenMM's Reference platform")


def _is_translation_invariant(terms, n: int, spatial_dim: int, seed: int) -> bool:
    """Whether the summed energy is unchanged (relative 1e-8) by shifting every particle."""
    x = torch.tensor(_check_configurations(n, spatial_dim, seed + 1, count=2)[..., :spatial_dim])
    shift = torch.tensor([0.731, -0.512, 0.377][:spatial_dim], dtype=torch.float64)
    with torch.no_grad():
        e0 = sum(t(x) for t in terms)
        e1 = sum(t(x + shift) for t in terms)
    return bool(torch.all((e1 - e0).abs() <= 1e-8 * torch.clamp(e0.abs(), min=1.0)))


# ----------------------------------------------------------------------------- translators
def _globals(force) -> dict[str, ex.Node]:
    return {force.getGlobalParameterName(i): ex.Const(force.getGlobalParameterDefaultValue(i))
            for i in range(force.getNumGlobalParameters())}


def _parse(force, text: str, rename: dict[str, str] | None = None) -> ex.Node:
    """Parse a force's expression with its global parameters substituted as constants."""
    if hasattr(force, "getNumTabulatedFunctions") and force.getNumTabulatedFunctions():
        raise NotTranslatable("tabulated functions")
    try:
        node = ex.parse(text)
    except ex.ExpressionError as err:
        raise NotTranslatable(str(err)) from err
    values = _globals(force)
    values.update({old: ex.Var(new) for old, new in (rename or {}).items()})
    return ex.substitute(node, values)


def _switched(energy: ex.Node, force, cutoff_method: int) -> ex.Node:
    """Apply a non-periodic cutoff (and OpenMM's switching function) to a pair energy in r."""
    if cutoff_method == 0:  # NoCutoff for every force type
        return energy
    rc = force.getCutoffDistance().value_in_unit(unit.nanometer)
    factor = f"(1-step(r-{rc!r}))"  # OpenMM drops pairs at r >= rc
    if force.getUseSwitchingFunction():
        rs = force.getSwitchingDistance().value_in_unit(unit.nanometer)
        x = f"((r-{rs!r})/{rc - rs!r})"
        factor += f"*select(step(r-{rs!r}), 1-6*{x}^5+15*{x}^4-10*{x}^3, 1)"
    return ex.op("mul", energy, ex.parse(factor))


def _custom_nonbonded(force: openmm.CustomNonbondedForce, n, scale, masses):
    if force.getNumComputedValues() or force.getNumFunctions():
        raise NotTranslatable("computed values or functions")
    method = force.getNonbondedMethod()
    if method not in (openmm.CustomNonbondedForce.NoCutoff, openmm.CustomNonbondedForce.CutoffNonPeriodic):
        raise NotTranslatable(f"nonbonded method {method}")
    energy = _switched(_parse(force, force.getEnergyFunction()), force, method)
    names = [force.getPerParticleParameterName(i) for i in range(force.getNumPerParticleParameters())]
    values = np.array([force.getParticleParameters(i) for i in range(n)], dtype=np.float64).reshape(n, len(names))
    excluded = {tuple(sorted(force.getExclusionParticles(i))) for i in range(force.getNumExclusions())}
    if force.getNumInteractionGroups():
        # As OpenMM computes them: a pair once per group it belongs to (twice if in two groups).
        pairs = []
        for g in range(force.getNumInteractionGroups()):
            s1, s2 = force.getInteractionGroupParameters(g)
            pairs += sorted({(min(i, j), max(i, j)) for i in s1 for j in s2 if i != j})
    else:
        pairs = None if not excluded else set(zip(*np.triu_indices(n, 1)))
    if pairs is not None:
        pairs = np.array(sorted(p for p in pairs if p not in excluded), dtype=np.int64).reshape(-1, 2)
    per_particle = {name: values[:, k] for k, name in enumerate(names)}
    return [PairTerm(energy, n, pairs, per_particle=per_particle, scale=scale)]


def _nonbonded(force: openmm.NonbondedForce, n, scale, masses):
    if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
        raise NotTranslatable("parameter offsets")
    method = force.getNonbondedMethod()
    if method not in (openmm.NonbondedForce.NoCutoff, openmm.NonbondedForce.CutoffNonPeriodic):
        raise NotTranslatable(f"nonbonded method {method}")
    params = np.array([[force.getParticleParameters(i)[k].value_in_unit(u)
                        for k, u in enumerate((unit.elementary_charge, unit.nanometer, unit.kilojoule_per_mole))]
                       for i in range(n)]).reshape(n, 3)
    coulomb = f"{ONE_4PI_EPS0!r}*q1*q2/r"
    if method == openmm.NonbondedForce.CutoffNonPeriodic:
        rc = force.getCutoffDistance().value_in_unit(unit.nanometer)
        eps_rf = force.getReactionFieldDielectric()
        krf = (eps_rf - 1) / (2 * eps_rf + 1) / rc**3
        crf = 1 / rc + krf * rc**2
        coulomb = f"{ONE_4PI_EPS0!r}*q1*q2*(1/r+{krf!r}*r^2-{crf!r})*(1-step(r-{rc!r}))"
    lj = _switched(ex.parse("4*eps*((sig/r)^12-(sig/r)^6); eps=sqrt(eps1*eps2); sig=0.5*(sig1+sig2)"), force, method)
    energy = ex.op("add", ex.parse(coulomb), lj)
    exceptions = [force.getExceptionParameters(k) for k in range(force.getNumExceptions())]
    excluded = {(min(i, j), max(i, j)) for i, j, *_ in exceptions}
    pairs = None
    if excluded:
        pairs = np.array([p for p in zip(*np.triu_indices(n, 1)) if p not in excluded], dtype=np.int64).reshape(-1, 2)
    per_particle = {"q": params[:, 0], "sig": params[:, 1], "eps": params[:, 2]}
    terms = [PairTerm(energy, n, pairs, per_particle=per_particle, scale=scale)]
    active = [(i, j, qq.value_in_unit(unit.elementary_charge**2), s.value_in_unit(unit.nanometer),
               e.value_in_unit(unit.kilojoule_per_mole)) for i, j, qq, s, e in exceptions
              if qq.value_in_unit(unit.elementary_charge**2) != 0 or e.value_in_unit(unit.kilojoule_per_mole) != 0]
    if active:
        a = np.array(active)
        terms.append(PairTerm(ex.parse(f"{ONE_4PI_EPS0!r}*qq/r + 4*eps*((sig/r)^12-(sig/r)^6)"), n,
                              a[:, :2].astype(np.int64), per_pair={"qq": a[:, 2], "sig": a[:, 3], "eps": a[:, 4]},
                              scale=scale))
    return terms


def _bond_table(count: int, get, n_points: int, names: list[str]):
    """Rows of (points..., params...) from an OpenMM getter -> points (count, k), params dict."""
    rows = [get(b) for b in range(count)]
    points = np.array([row[:n_points] for row in rows], dtype=np.int64).reshape(count, n_points)
    values = np.array([list(row[n_points]) if len(row) > n_points else [] for row in rows],
                      dtype=np.float64).reshape(count, len(names))
    return points, {name: values[:, k] for k, name in enumerate(names)}


def _grouped_bond_table(force, k: int):
    """Bonds of a compound or centroid force, whose rows are (points, params) -> points
    (n_bonds, k), params dict."""
    names = _param_names(force, "getNumPerBondParameters", "getPerBondParameterName")
    rows = [force.getBondParameters(b) for b in range(force.getNumBonds())]
    points = np.array([list(r[0]) for r in rows], dtype=np.int64).reshape(len(rows), k)
    values = np.array([list(r[1]) for r in rows], dtype=np.float64).reshape(len(rows), len(names))
    return points, {name: values[:, i] for i, name in enumerate(names)}


def _param_names(force, count_getter: str, name_getter: str) -> list[str]:
    return [getattr(force, name_getter)(i) for i in range(getattr(force, count_getter)())]


def _custom_bond(force: openmm.CustomBondForce, n, scale, masses):
    names = _param_names(force, "getNumPerBondParameters", "getPerBondParameterName")
    pairs, per_pair = _bond_table(force.getNumBonds(), force.getBondParameters, 2, names)
    return [PairTerm(_parse(force, force.getEnergyFunction()), n, pairs, per_pair=per_pair, scale=scale)]


def _harmonic_bond(force: openmm.HarmonicBondForce, n, scale, masses):
    rows = [force.getBondParameters(b) for b in range(force.getNumBonds())]
    pairs = np.array([r[:2] for r in rows], dtype=np.int64).reshape(-1, 2)
    r0 = np.array([r[2].value_in_unit(unit.nanometer) for r in rows])
    k = np.array([r[3].value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2) for r in rows])
    return [PairTerm(ex.parse("0.5*k*(r-r0)^2"), n, pairs, per_pair={"r0": r0, "k": k}, scale=scale)]


def _private(names: list[str]) -> dict[str, str]:
    """Internal names of per-item parameters of forces whose expressions have no coordinate
    variables: a parameter may be called x1 there, which BondedTerm's coordinates would shadow."""
    return {name: f"{name}'" for name in names}


def _custom_external(force: openmm.CustomExternalForce, n, scale, masses):
    private = _private(_param_names(force, "getNumPerParticleParameters", "getPerParticleParameterName"))
    points, params = _bond_table(force.getNumParticles(), force.getParticleParameters, 1, list(private.values()))
    energy = _parse(force, force.getEnergyFunction(), {**private, "x": "x1", "y": "y1", "z": "z1"})
    return [BondedTerm(energy, points, params, scale)]


def _harmonic_angle(force: openmm.HarmonicAngleForce, n, scale, masses):
    rows = [force.getAngleParameters(b) for b in range(force.getNumAngles())]
    points = np.array([r[:3] for r in rows], dtype=np.int64).reshape(-1, 3)
    params = {"theta0": np.array([r[3].value_in_unit(unit.radian) for r in rows]),
              "k": np.array([r[4].value_in_unit(unit.kilojoule_per_mole / unit.radian**2) for r in rows])}
    return [BondedTerm(ex.parse("0.5*k*(angle(p1,p2,p3)-theta0)^2"), points, params, scale)]


def _custom_angle(force: openmm.CustomAngleForce, n, scale, masses):
    private = _private(_param_names(force, "getNumPerAngleParameters", "getPerAngleParameterName"))
    points, params = _bond_table(force.getNumAngles(), force.getAngleParameters, 3, list(private.values()))
    energy = ex.substitute(_parse(force, force.getEnergyFunction(), private),
                           {"theta": ex.parse("angle(p1,p2,p3)")})
    return [BondedTerm(energy, points, params, scale)]


def _periodic_torsion(force: openmm.PeriodicTorsionForce, n, scale, masses):
    rows = [force.getTorsionParameters(b) for b in range(force.getNumTorsions())]
    points = np.array([r[:4] for r in rows], dtype=np.int64).reshape(-1, 4)
    params = {"periodicity": np.array([float(r[4]) for r in rows]),
              "phase": np.array([r[5].value_in_unit(unit.radian) for r in rows]),
              "k": np.array([r[6].value_in_unit(unit.kilojoule_per_mole) for r in rows])}
    return [BondedTerm(ex.parse("k*(1+cos(periodicity*dihedral(p1,p2,p3,p4)-phase))"), points, params, scale)]


def _custom_torsion(force: openmm.CustomTorsionForce, n, scale, masses):
    private = _private(_param_names(force, "getNumPerTorsionParameters", "getPerTorsionParameterName"))
    points, params = _bond_table(force.getNumTorsions(), force.getTorsionParameters, 4, list(private.values()))
    energy = ex.substitute(_parse(force, force.getEnergyFunction(), private),
                           {"theta": ex.parse("dihedral(p1,p2,p3,p4)")})
    return [BondedTerm(energy, points, params, scale)]


def _custom_compound(force: openmm.CustomCompoundBondForce, n, scale, masses):
    points, params = _grouped_bond_table(force, force.getNumParticlesPerBond())
    return [BondedTerm(_parse(force, force.getEnergyFunction()), points, params, scale)]


def _custom_centroid(force: openmm.CustomCentroidBondForce, n, scale, masses):
    k = force.getNumGroupsPerBond()
    weights = np.zeros((force.getNumGroups(), n))
    for g in range(force.getNumGroups()):
        particles, w = force.getGroupParameters(g)
        w = np.asarray(w, dtype=np.float64) if len(w) else masses[list(particles)]
        if w.sum() == 0:
            raise NotTranslatable(f"group {g} has zero total weight")
        np.add.at(weights[g], list(particles), w / w.sum())
    points, params = _grouped_bond_table(force, k)
    energy = _parse(force, force.getEnergyFunction(), {f"g{m}": f"p{m}" for m in range(1, k + 1)})
    return [BondedTerm(energy, points, params, scale, weights)]


_TRANSLATORS = {
    "CustomNonbondedForce": _custom_nonbonded,
    "NonbondedForce": _nonbonded,
    "CustomBondForce": _custom_bond,
    "HarmonicBondForce": _harmonic_bond,
    "CustomExternalForce": _custom_external,
    "HarmonicAngleForce": _harmonic_angle,
    "CustomAngleForce": _custom_angle,
    "PeriodicTorsionForce": _periodic_torsion,
    "CustomTorsionForce": _custom_torsion,
    "CustomCompoundBondForce": _custom_compound,
    "CustomCentroidBondForce": _custom_centroid,
}
