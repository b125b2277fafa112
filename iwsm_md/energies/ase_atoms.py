"""`from_ase`: an ASE `Atoms` with a calculator becomes a batched torch `Energy`.

`LennardJones` (with its cutoff and shift, or its smooth cutoff, exactly as ASE computes them)
and `HarmonicCentroidRestraint` are translated into torch kernels, as are the parts of a
`SumCalculator` / `LinearCombinationCalculator`; anything else runs through the exact
per-configuration fallback (`fallback.ASEFallbackTerm`), with a warning. The translation is
checked on build against the calculator itself.

Units are converted here and nowhere else: positions in Å, energies divided by kT = k_B·T (eV).
"""
from __future__ import annotations

import warnings

import numpy as np
from ase import Atoms
from ase.calculators.lj import LennardJones
from ase.calculators.mixing import LinearCombinationCalculator

from iwsm_md.energies import expression as ex
from iwsm_md.energies.ase_calculators import HarmonicCentroidRestraint
from iwsm_md.energies.base import TermEnergy
from iwsm_md.energies.bonded import BondedTerm
from iwsm_md.energies.check import compare_terms
from iwsm_md.energies.fallback import ASEFallbackTerm
from iwsm_md.energies.pair import PairTerm
from iwsm_md.energies.units import BOLTZMANN_EV, kelvin

# A Lennard-Jones cutoff counts as changing the energy when the pair potential at rc is
# larger than this fraction of epsilon.
_NEGLIGIBLE_TAIL = 1e-6


def from_ase(atoms: Atoms, temperature, *, check: bool = True, seed: int = 0) -> TermEnergy:
    """Translate an ASE `Atoms` with a calculator into a batched torch `Energy` returning E/kT.

    Args:
        atoms: a non-periodic `ase.Atoms` with a calculator attached.
        temperature: kelvin (number or openmm Quantity); energies are divided by k_B·T.
        check: compare the translated parts with the calculator on perturbed copies of
            `atoms.positions` (float64) and raise `TranslationMismatch` above relative 1e-10.
        seed: seed of the perturbations.

    Returns:
        An Energy over positions `(batch, 3 * len(atoms))` in Å (`length_unit="Å"`), with
        `kT` (eV) and `report` (name -> max relative error, or "fallback").
    """
    if not isinstance(atoms, Atoms):
        raise TypeError(f"expected an ase.Atoms, got {type(atoms).__name__}")
    kT = BOLTZMANN_EV * kelvin(temperature)
    n = len(atoms)
    if n == 0:
        raise ValueError("the Atoms object has no atoms")
    if atoms.calc is None:
        raise ValueError("the Atoms object has no calculator: attach one (atoms.calc = ...)")
    if any(atoms.pbc):
        raise ValueError(f"periodic boundaries (pbc={atoms.pbc.tolist()}): iwsm_md samples clusters in open "
                         "space; set atoms.pbc = False")
    if not np.all(np.isfinite(atoms.positions)):
        raise ValueError("atoms.positions contain NaN or inf")
    if atoms.constraints:
        warnings.warn(f"the Atoms object has constraints {atoms.constraints}: they are not part of the energy, "
                      "and the sampler draws unconstrained coordinates", UserWarning, stacklevel=2)
    calculator, atoms = atoms.calc, atoms.copy()  # a copy without constraints, which would pin
    atoms.set_constraint()  # positions and zero forces in the check and the fallback
    parts = _parts(calculator)
    configs = _check_configurations(atoms.positions, seed)
    terms, report, counts = [], {}, {}
    for calc, weight in parts:
        name = type(calc).__name__
        counts[name] = counts.get(name, 0) + 1
        if counts[name] > 1:  # several parts of one type: number them so that none is hidden
            name = f"{name} #{counts[name]}"
        translated = _translate(calc, n, weight / kT)
        if translated is None:
            sub = atoms.copy()
            sub.calc = calc if weight == 1 else LinearCombinationCalculator([calc], [weight])
            terms.append(ASEFallbackTerm(sub, kT, name))
            report[name] = "fallback"
            continue
        if check:
            report[name] = _check(name, calc, weight, translated, atoms, configs, kT)
        terms.extend(translated)
    energy = TermEnergy(terms, n, 3, length_unit="Å", translation_invariant=all(
        isinstance(c, (LennardJones, HarmonicCentroidRestraint)) for c, _ in parts))
    energy.kT = kT
    energy.report = report
    return energy


def _parts(calc) -> list[tuple[object, float]]:
    """(calculator, weight) pairs of a calculator, flattening linear combinations."""
    if isinstance(calc, LinearCombinationCalculator):
        return [(c, w * float(weight)) for sub, weight in zip(calc.mixer.calcs, calc.mixer.weights)
                for c, w in _parts(sub)]
    return [(calc, 1.0)]


def _translate(calc, n: int, scale: float):
    """Torch terms of one calculator with energies scaled by `scale`, or None if untranslatable."""
    if isinstance(calc, LennardJones):
        return [_lennard_jones(calc, n, scale)]
    if isinstance(calc, HarmonicCentroidRestraint):
        weights = np.vstack([np.full((1, n), 1.0 / n), np.eye(n)])
        points = np.stack([np.zeros(n, dtype=np.int64), np.arange(1, n + 1)], axis=1)
        k = float(calc.parameters.k)
        # squared distance from coordinates: through distance() the gradient is NaN at the centroid
        energy = ex.parse(f"0.5*{k!r}*((x1-x2)^2+(y1-y2)^2+(z1-z2)^2)")
        return [BondedTerm(energy, points, scale=scale, centroid_weights=weights)]
    return None


def _lennard_jones(calc: LennardJones, n: int, scale: float) -> PairTerm:
    p = calc.parameters
    sigma, epsilon, rc, ro = (float(p[k]) for k in ("sigma", "epsilon", "rc", "ro"))
    smooth = bool(p["smooth"])

    def lj(r: float) -> float:
        return 4 * epsilon * ((sigma / r) ** 12 - (sigma / r) ** 6)

    tail = lj(rc)
    # largest change of the pair energy: the shift (and the dropped tail beyond rc), or for the
    # smooth cutoff the potential from ro on (|lj| decreases beyond its minimum at 2^(1/6) sigma)
    onset = ro if smooth else rc
    change = abs(lj(onset)) if onset >= 2 ** (1 / 6) * sigma else max(abs(lj(onset)), abs(epsilon))
    if change > _NEGLIGIBLE_TAIL * abs(epsilon):
        # |lj(r)| <= 4 |epsilon| (sigma/r)^6 beyond the minimum: this r makes the change negligible
        r_ok = sigma * (4 / _NEGLIGIBLE_TAIL) ** (1 / 6)
        how = (f"multiplies it by a smooth cutoff function from ro = {ro:g} Å" if smooth
               else f"shifts it by {-tail:+.3g} eV inside rc and drops it beyond")
        advice = f"{'ro' if smooth else 'rc'} >= {r_ok:.3g} Å ({r_ok / sigma:.3g} sigma)"
        advice += " and rc > ro" if smooth else ""
        warnings.warn(
            f"LennardJones has rc = {rc:g} Å ({rc / sigma:.3g} sigma): ASE truncates the pair potential there "
            f"(it {how}), and the sampler will draw from that truncated energy; pass {advice} for the full "
            "potential", UserWarning, stacklevel=4)
    pair = f"4*{epsilon!r}*(({sigma!r}/r)^12-({sigma!r}/r)^6)"
    rc2, ro2 = rc * rc, ro * ro
    if smooth and ro >= rc:  # the cutoff function is 1 wherever the pair energy is not cut off
        energy = f"({pair})*step({rc2!r}-r^2)"
    elif smooth:  # ASE's cutoff function in r², from 1 below ro to 0 at rc
        cut = f"select(step({ro2!r}-r^2), 1, ({rc2!r}-r^2)^2*({rc2!r}+2*r^2-{3 * ro2!r})/{(rc2 - ro2) ** 3!r})"
        energy = f"({pair})*{cut}*step({rc2!r}-r^2)"
    else:
        energy = f"(({pair})-{tail!r})*step({rc!r}-r)"
    return PairTerm(ex.parse(energy), n, scale=scale)


def _check_configurations(positions: np.ndarray, seed: int, count: int = 4) -> np.ndarray:
    """`count` copies of `positions` (Å) perturbed by 2% of the smallest interatomic distance."""
    rng = np.random.default_rng(seed)
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    d_min = d[np.triu_indices(len(positions), 1)].min() if len(positions) > 1 else 0.0
    scale = 0.02 * d_min if d_min > 0 else 0.1  # coincident atoms (e.g. Atoms("Ar13")) are pulled apart
    return positions[None] + rng.normal(0, scale, (count,) + positions.shape)


def _check(name, calc, weight, terms, atoms, configs, kT) -> float:
    probe = atoms.copy()
    probe.calc = calc
    energies, forces = [], []
    for x in configs:
        probe.set_positions(x)
        energies.append(weight * probe.get_potential_energy())
        forces.append(weight * probe.get_forces())
    return compare_terms(name, terms, configs, np.array(energies), np.array(forces), kT, f"ASE's {name}")
