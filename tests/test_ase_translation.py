"""`from_ase`: ASE calculators translated to torch, checked against the calculators themselves.

Every energy and force is compared with the ASE calculator it came from (E/kT times kT in eV),
on configurations made here, not with the ones `from_ase` checks itself on; the LJ-n benchmark is
also compared with its OpenMM twin translated by `from_openmm`, and with a closed form.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.calculators.mixing import AverageCalculator, LinearCombinationCalculator, MixedCalculator, SumCalculator
from ase.constraints import FixAtoms
from ase.units import kB

from iwsm_md.energies import HarmonicCentroidRestraint, from_ase, from_openmm
from iwsm_md.potentials import ASE_REDUCED_TEMPERATURE, REDUCED_TEMPERATURE, lj_cluster, lj_cluster_atoms

RTOL = 1e-10
T = 300.0
FALLBACK_WARNING = "ignore:the ASE calculator.*fallback:UserWarning"


# ------------------------------------------------------------------------------- helpers
def random_cluster(n: int, radius: float, rng, d_min: float = 0.9) -> np.ndarray:
    """`(n, 3)` Å: random sequential addition in a ball, no two atoms closer than d_min."""
    points = []
    while len(points) < n:
        p = rng.uniform(-radius, radius, 3)
        if np.linalg.norm(p) <= radius and all(np.linalg.norm(p - q) >= d_min for q in points):
            points.append(p)
    return np.array(points)


def pair_distances(configs: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(configs.shape[1], 1)
    return np.linalg.norm(configs[:, i] - configs[:, j], axis=-1)


def calculator_reference(atoms: Atoms, configs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The calculator's own energies `(B,)` eV and forces `(B, n, 3)` eV/Å, without constraints."""
    probe = atoms.copy()
    probe.set_constraint()
    probe.calc = atoms.calc
    energies, forces = [], []
    for x in configs:
        probe.positions = x
        energies.append(probe.get_potential_energy())
        forces.append(probe.get_forces())
    return np.array(energies), np.array(forces)


def energies_and_forces(energy, configs: np.ndarray, dtype=torch.float64) -> tuple[np.ndarray, np.ndarray]:
    """E/kT `(B,)` and forces `(B, n, 3)` in kT/Å of the translated energy."""
    x = torch.tensor(configs.reshape(len(configs), -1), dtype=dtype)
    e, f = energy.energy_and_forces(x)
    assert e.dtype == dtype and f.dtype == dtype
    return e.double().numpy(), f.double().numpy().reshape(configs.shape)


def assert_matches(energy, atoms: Atoms, configs: np.ndarray, rtol: float = RTOL) -> None:
    """Translated energy (times kT) equals the calculator's energies and forces on `configs`."""
    e_ref, f_ref = calculator_reference(atoms, configs)
    e, f = energies_and_forces(energy, configs)
    e_err = np.abs(e * energy.kT - e_ref) / np.maximum(np.abs(e_ref), 1.0)
    f_err = np.abs(f * energy.kT - f_ref).max() / max(np.abs(f_ref).max(), 1.0)
    assert e_err.max() <= rtol, f"energies {e * energy.kT} vs {e_ref}"
    assert f_err <= rtol, f"forces: relative error {f_err:.3g}"


def atoms_with(calc, positions, symbols: str | None = None) -> Atoms:
    atoms = Atoms(symbols or f"Ar{len(positions)}", positions=positions)
    atoms.calc = calc
    return atoms


def quiet_from_ase(atoms, temperature=T, **kwargs):
    """from_ase with no warning allowed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return from_ase(atoms, temperature, **kwargs)


class Anchor(Calculator):
    """E = 0.5 k Σ_i |x_i − a|² about a fixed point a: a calculator from_ase does not know."""

    implemented_properties = ["energy", "free_energy", "forces"]
    nolabel = True

    def __init__(self, k: float = 0.7, anchor=(0.3, -0.2, 0.1)):
        super().__init__()
        self.k, self.anchor = k, np.asarray(anchor, dtype=float)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions - self.anchor
        e = 0.5 * self.k * float(np.sum(d * d))
        self.results = {"energy": e, "free_energy": e, "forces": -self.k * d}


# ------------------------------------------------------------------------- the LJ-n benchmark
@pytest.fixture(scope="module", params=[13, 55])
def lj_n(request):
    n = request.param
    atoms = lj_cluster_atoms(n)
    energy = quiet_from_ase(atoms, ASE_REDUCED_TEMPERATURE)  # rc = 1e3: no truncation warning
    rng = np.random.default_rng(n)
    radius = 0.62 * n ** (1 / 3)
    configs = np.stack([random_cluster(n, radius, rng) for _ in range(3)]
                       + [random_cluster(n, 1.6 * radius, rng, d_min=1.2) + rng.normal(0, 2.0, 3)])
    return n, atoms, energy, configs


def test_lj_cluster_matches_ase_calculator(lj_n):
    n, atoms, energy, configs = lj_n
    assert energy.kT == pytest.approx(1.0, rel=1e-15)  # ASE_REDUCED_TEMPERATURE: kT = 1 eV
    assert energy.n_particles == n and energy.dim == 3 * n and energy.length_unit == "Å"
    assert energy.translation_invariant
    assert set(energy.report) == {"LennardJones", "HarmonicCentroidRestraint"}
    assert all(err <= RTOL for err in energy.report.values())
    assert_matches(energy, atoms, configs)


def test_lj_cluster_matches_openmm_twin_and_closed_form(lj_n):
    """The ASE benchmark in eV/Å at kT = 1 eV equals the OpenMM one in kJ/mol/nm at kT = 1 kJ/mol."""
    n, atoms, energy, configs = lj_n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = from_openmm(lj_cluster(n), REDUCED_TEMPERATURE)
    e, f = energies_and_forces(energy, configs)
    e_omm, f_omm = energies_and_forces(twin, configs)
    np.testing.assert_allclose(e, e_omm, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(f, f_omm, rtol=0, atol=RTOL * np.abs(f_omm).max())
    # E = Σ_{i≠j} [d^-12 − 2 d^-6] + 0.5 Σ_i |x_i − x̄|² (eV, kT = 1 eV)
    d = pair_distances(configs)
    centred = configs - configs.mean(axis=1, keepdims=True)
    closed = 2 * np.sum(d**-12 - 2 * d**-6, axis=1) + 0.5 * np.sum(centred**2, axis=(1, 2))
    np.testing.assert_allclose(e, closed, rtol=RTOL)


def test_forces_are_minus_the_gradient_by_finite_differences():
    atoms = lj_cluster_atoms(13, seed=3)
    energy = quiet_from_ase(atoms, 500.0)
    x = torch.tensor(atoms.positions.reshape(1, -1))
    _, f = energy.energy_and_forces(x)
    h = 1e-6
    steps = torch.eye(x.shape[1], dtype=torch.float64) * h
    with torch.no_grad():
        fd = -(energy(x + steps) - energy(x - steps)) / (2 * h)
    np.testing.assert_allclose(f[0].numpy(), fd.numpy(), rtol=0, atol=1e-6 * float(fd.abs().max()))


def test_float32():
    atoms = lj_cluster_atoms(13, seed=1)
    energy = quiet_from_ase(atoms, ASE_REDUCED_TEMPERATURE)
    rng = np.random.default_rng(5)
    configs = np.stack([random_cluster(13, 1.5, rng) for _ in range(4)])
    e64, f64 = energies_and_forces(energy, configs)
    e32, f32 = energies_and_forces(energy, configs, dtype=torch.float32)
    np.testing.assert_allclose(e32, e64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f32, f64, rtol=0, atol=1e-4 * np.abs(f64).max())


def test_energy_is_in_units_of_kT_and_translation_invariant():
    atoms = lj_cluster_atoms(13)
    e300, e600 = quiet_from_ase(atoms, 300.0), quiet_from_ase(atoms, 600.0)
    assert e300.kT == pytest.approx(kB * 300.0, rel=1e-15)
    x = torch.tensor(atoms.positions.reshape(1, -1))
    torch.testing.assert_close(e300(x), 2 * e600(x), rtol=1e-14, atol=0)
    shifted = x + torch.tensor([1.7, -0.4, 3.1], dtype=torch.float64).repeat(13)
    torch.testing.assert_close(e300(shifted), e300(x), rtol=1e-12, atol=0)


# ------------------------------------------------------------------- Lennard-Jones cutoffs
def test_default_cutoff_warns_and_is_translated_exactly():
    rng = np.random.default_rng(11)
    calc = LennardJones(sigma=1.3, epsilon=0.4)  # rc = 3 sigma = 3.9 Å
    atoms = atoms_with(calc, random_cluster(10, 4.0, rng, d_min=1.2))
    with pytest.warns(UserWarning, match=r"rc = 3\.9 Å") as record:
        energy = from_ase(atoms, T)
    assert [w.filename for w in record] == [__file__]  # the warning points at the caller
    configs = np.stack([random_cluster(10, 4.5, rng, d_min=1.1) for _ in range(5)])
    d = pair_distances(configs)
    assert (d > 3.9).sum() > 20 and (d < 3.9).sum() > 20  # pairs on both sides of the cutoff
    assert_matches(energy, atoms, configs)


def test_default_cutoff_pairs_beyond_rc_have_zero_energy():
    calc = LennardJones()  # sigma = 1, rc = 3
    configs = np.array([[[0, 0, 0], [r, 0, 0]] for r in (2.5, 2.9999, 3.0001, 3.5, 10.0)], dtype=float)
    atoms = atoms_with(calc, configs[0])
    with pytest.warns(UserWarning, match="rc = 3 Å"):
        energy = from_ase(atoms, T)
    e, f = energies_and_forces(energy, configs)
    assert np.all(e[2:] == 0) and np.all(f[2:] == 0)
    assert abs(e[1]) * energy.kT < 1e-5  # shifted to zero at rc
    assert_matches(energy, atoms, configs)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # ASE's own cutoff function at ro = rc
@pytest.mark.parametrize("rc,ro", [(4.0, 2.5), (3.3, None), (5.0, 5.0), (3.0, 4.0)])
def test_smooth_cutoff_is_translated_exactly(rc, ro):
    rng = np.random.default_rng(13)
    calc = LennardJones(sigma=1.1, epsilon=0.7, rc=rc, ro=ro, smooth=True)
    ro = calc.parameters.ro  # 0.66 rc by default
    atoms = atoms_with(calc, random_cluster(10, 4.0, rng, d_min=1.2))
    with pytest.warns(UserWarning, match=f"rc = {rc:g} Å"):
        energy = from_ase(atoms, T)
    configs = np.stack([random_cluster(10, 4.5, rng, d_min=1.0) for _ in range(5)])
    d = pair_distances(configs)
    assert (d < min(ro, rc)).sum() > 10 and (d > rc).sum() > 10
    if ro < rc:
        assert ((d > ro) & (d < rc)).sum() > 10  # inside the switching region
    assert_matches(energy, atoms, configs)


def test_long_cutoff_does_not_warn():
    rng = np.random.default_rng(17)
    atoms = atoms_with(LennardJones(sigma=0.9, epsilon=1.5, rc=15.0), random_cluster(8, 3.0, rng))
    energy = quiet_from_ase(atoms)
    assert_matches(energy, atoms, np.stack([random_cluster(8, 3.0, rng) for _ in range(3)]))
    quiet_from_ase(atoms_with(LennardJones(rc=30.0, ro=20.0, smooth=True), random_cluster(8, 3.0, rng)))


def test_the_advised_cutoff_does_not_warn():
    """The warning's advice is consistent: the rc it asks for is long enough to be silent."""
    rng = np.random.default_rng(19)
    positions = random_cluster(6, 2.0, rng)
    with pytest.warns(UserWarning, match="rc = 10 Å") as record:
        from_ase(atoms_with(LennardJones(rc=10.0), positions), T)
    advised = float(re.search(r"pass rc >= ([0-9.]+) Å", str(record[0].message)).group(1))
    assert advised > 10.0
    quiet_from_ase(atoms_with(LennardJones(rc=advised * 1.001), positions))
    with pytest.warns(UserWarning, match="ro >= ") as record:
        from_ase(atoms_with(LennardJones(rc=100.0, ro=1.5, smooth=True), positions), T)  # ro is what counts
    advised = float(re.search(r"pass ro >= ([0-9.]+) Å", str(record[0].message)).group(1))
    quiet_from_ase(atoms_with(LennardJones(rc=2 * advised, ro=advised * 1.001, smooth=True), positions))


# -------------------------------------------------------------------- combined calculators
def test_weighted_and_nested_combinations():
    rng = np.random.default_rng(23)
    calc = LinearCombinationCalculator(
        [SumCalculator([LennardJones(rc=20.0), HarmonicCentroidRestraint(k=0.3)]),
         LinearCombinationCalculator([LennardJones(sigma=0.8, epsilon=2.0, rc=2.0)], [0.5])],
        [0.7, -1.3])
    atoms = atoms_with(calc, random_cluster(9, 2.5, rng))
    with pytest.warns(UserWarning, match="rc = 2 Å"):
        energy = from_ase(atoms, T)
    assert set(energy.report) == {"LennardJones", "HarmonicCentroidRestraint", "LennardJones #2"}
    assert all(err <= RTOL for err in energy.report.values())
    assert_matches(energy, atoms, np.stack([random_cluster(9, 3.0, rng) for _ in range(4)]))


@pytest.mark.parametrize("make", [
    lambda: MixedCalculator(LennardJones(rc=20.0), HarmonicCentroidRestraint(k=2.0), 0.25, 1.5),
    lambda: AverageCalculator([LennardJones(rc=20.0), LennardJones(sigma=1.2, rc=25.0), HarmonicCentroidRestraint()]),
    lambda: SumCalculator([SumCalculator([HarmonicCentroidRestraint(k=0.5)]), LennardJones(epsilon=0.1, rc=20.0)]),
], ids=["mixed", "average", "sum-of-sum"])
def test_other_linear_combinations(make):
    rng = np.random.default_rng(29)
    atoms = atoms_with(make(), random_cluster(7, 2.0, rng))
    energy = quiet_from_ase(atoms)
    assert all(isinstance(err, float) for err in energy.report.values())
    assert_matches(energy, atoms, np.stack([random_cluster(7, 2.5, rng) for _ in range(4)]))


def test_centroid_restraint_with_an_atom_at_the_centroid():
    """Forces stay finite (and exact) when an atom sits exactly on the centroid."""
    positions = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.5, 0.0], [0.0, -1.5, 0.0]])
    atoms = atoms_with(SumCalculator([HarmonicCentroidRestraint(k=2.0), LennardJones(rc=20.0)]), positions)
    energy = quiet_from_ase(atoms)
    configs = positions[None]
    _, f = energies_and_forces(energy, configs)
    assert np.all(np.isfinite(f))
    assert_matches(energy, atoms, configs)
    single = quiet_from_ase(atoms_with(HarmonicCentroidRestraint(), [[0.3, 0.0, 0.0]]))  # one atom: always there
    e, f = energies_and_forces(single, np.array([[[0.3, 0.0, 0.0]]]))
    assert e[0] == 0 and np.all(f == 0)


# ---------------------------------------------------------------------------- the fallback
def test_untranslatable_calculator_goes_to_the_fallback():
    rng = np.random.default_rng(31)
    positions = random_cluster(4, 2.0, rng, d_min=2.3)
    atoms = atoms_with(EMT(), positions, symbols="Cu3Al")
    with pytest.warns(UserWarning, match="'EMT'.*fallback"):
        energy = from_ase(atoms, T)
    assert energy.report == {"EMT": "fallback"}
    assert not energy.translation_invariant  # not claimed for what it cannot see
    configs = positions + rng.normal(0, 0.1, (3, 4, 3))
    assert_matches(energy, atoms, configs)


def test_custom_calculator_and_weights_in_the_fallback():
    rng = np.random.default_rng(37)
    positions = random_cluster(5, 2.0, rng)
    calc = LinearCombinationCalculator([Anchor(k=0.7), LennardJones(rc=20.0)], [2.5, 0.5])
    atoms = atoms_with(calc, positions)
    with pytest.warns(UserWarning, match="'Anchor'"):
        energy = from_ase(atoms, T)
    assert energy.report["Anchor"] == "fallback" and energy.report["LennardJones"] <= RTOL
    configs = np.stack([random_cluster(5, 2.5, rng) for _ in range(3)])
    assert_matches(energy, atoms, configs)
    # the anchor part, independently: 2.5 * 0.5 k Σ|x − a|²
    only = quiet_from_ase(atoms_with(LennardJones(rc=20.0), positions))
    e, _ = energies_and_forces(energy, configs)
    e_lj, _ = energies_and_forces(only, configs)
    anchor = 2.5 * 0.5 * 0.7 * np.sum((configs - np.array([0.3, -0.2, 0.1])) ** 2, axis=(1, 2))
    np.testing.assert_allclose((e - 0.5 * e_lj) * energy.kT, anchor, rtol=1e-12)


@pytest.mark.filterwarnings(FALLBACK_WARNING)
def test_mixture_of_translatable_and_untranslatable_parts():
    rng = np.random.default_rng(41)
    positions = random_cluster(5, 2.5, rng, d_min=2.3)
    calc = SumCalculator([EMT(), LennardJones(sigma=2.2, epsilon=0.05, rc=40.0),
                          LinearCombinationCalculator([HarmonicCentroidRestraint(k=0.2), Anchor()], [1.0, 0.3]),
                          EMT()])
    atoms = atoms_with(calc, positions, symbols="Cu3AlCu")
    energy = from_ase(atoms, T)
    assert energy.report.keys() == {"EMT", "LennardJones", "HarmonicCentroidRestraint", "Anchor", "EMT #2"}
    assert energy.report["EMT"] == energy.report["EMT #2"] == energy.report["Anchor"] == "fallback"
    assert_matches(energy, atoms, positions + rng.normal(0, 0.1, (3, 5, 3)))


@pytest.mark.filterwarnings(FALLBACK_WARNING)
def test_constraints_are_ignored_with_a_warning():
    """A FixAtoms constraint would pin the atom in the check and the fallback: it is dropped."""
    rng = np.random.default_rng(43)
    positions = random_cluster(4, 2.0, rng, d_min=2.3)
    for calc in (LennardJones(sigma=2.2, rc=40.0), EMT()):
        atoms = atoms_with(calc, positions, symbols="Cu3Al")
        atoms.set_constraint(FixAtoms(indices=[0]))
        with pytest.warns(UserWarning, match="constraints"):
            energy = from_ase(atoms, T)
        assert atoms.constraints  # the caller's atoms are left alone
        assert_matches(energy, atoms, positions + rng.normal(0, 0.1, (3, 4, 3)))


def test_coincident_atoms_in_the_template():
    """Atoms("Ar4") has every atom at the origin: the self-check still works."""
    atoms = Atoms("Ar4")
    atoms.calc = LennardJones(rc=20.0)
    energy = quiet_from_ase(atoms)
    rng = np.random.default_rng(47)
    assert_matches(energy, atoms, np.stack([random_cluster(4, 1.5, rng) for _ in range(3)]))


def test_check_false_gives_the_same_energy():
    atoms = lj_cluster_atoms(13, seed=2)
    x = torch.tensor(atoms.positions.reshape(1, -1) * 1.05)
    unchecked = quiet_from_ase(atoms, check=False)
    torch.testing.assert_close(unchecked(x), quiet_from_ase(atoms)(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- bad input
def _good_atoms(**kwargs) -> Atoms:
    atoms = Atoms("Ar2", positions=[[0, 0, 0], [1.1, 0, 0]], **kwargs)
    atoms.calc = LennardJones(rc=20.0)
    return atoms


def test_bad_input():
    with pytest.raises(TypeError, match="ase.Atoms"):
        from_ase(_good_atoms().positions, T)
    empty = Atoms()
    empty.calc = LennardJones()
    with pytest.raises(ValueError, match="no atoms"):
        from_ase(empty, T)
    with pytest.raises(ValueError, match="no calculator"):
        from_ase(Atoms("Ar2", positions=[[0, 0, 0], [1.1, 0, 0]]), T)
    with pytest.raises(ValueError, match="periodic.*pbc"):
        from_ase(_good_atoms(pbc=True, cell=[10, 10, 10]), T)
    with pytest.raises(ValueError, match="periodic.*pbc"):
        from_ase(_good_atoms(pbc=[False, False, True], cell=[10, 10, 10]), T)
    atoms = _good_atoms()
    atoms.positions[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        from_ase(atoms, T)
    with pytest.raises(TypeError, match="temperature"):
        from_ase(_good_atoms(), None)
    for bad in (0, 0.0, -10.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            from_ase(_good_atoms(), bad)
