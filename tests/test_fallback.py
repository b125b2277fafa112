"""Exact fallback terms: OpenMM (Reference platform, in-process and pool) and ASE calculators."""
from __future__ import annotations

import copy
import gc
import pickle

import numpy as np
import openmm
import pytest
import torch
from ase import Atoms
from ase.calculators.lj import LennardJones

from iwsm_md.energies.fallback import ASEFallbackTerm, OpenMMFallbackTerm

# The construction warning is tested once, in test_construction_warnings.
pytestmark = pytest.mark.filterwarnings("ignore:.*fallback:UserWarning")

KT = 2.494  # kJ/mol (300 K)
N = 5


def morse_system(n: int = N) -> openmm.System:
    """Morse pairs (NoCutoff) plus a harmonic bond chain."""
    system = openmm.System()
    for _ in range(n):
        system.addParticle(1.0)
    morse = openmm.CustomNonbondedForce("D*(1-exp(-a*(r-r0)))^2 - D; D=3.0; a=12.0; r0=0.35")
    morse.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
    for _ in range(n):
        morse.addParticle([])
    system.addForce(morse)
    bonds = openmm.HarmonicBondForce()
    for i in range(n - 1):
        bonds.addBond(i, i + 1, 0.4, 500.0)
    system.addForce(bonds)
    return system


def make_term(system=None, spatial_dim=3, **kwargs) -> OpenMMFallbackTerm:
    system = system if system is not None else morse_system()
    names = [system.getForce(i).getName() for i in range(system.getNumForces())]
    return OpenMMFallbackTerm(system, KT, spatial_dim, names, **kwargs)


def reference(system: openmm.System, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Direct single-Context Reference evaluation: E/kT (batch,) and forces in kT/nm (batch, N, 3)."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for p in pos:
        context.setPositions(p * openmm.unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer))
    return np.array(energies) / KT, np.array(forces) / KT


def chain_positions(batch: int, n: int = N, dim: int = 3, seed: int = 0) -> np.ndarray:
    """Perturbed straight chains with 0.4 nm spacing, (batch, n, dim) in nm."""
    rng = np.random.default_rng(seed)
    base = np.zeros((n, dim))
    base[:, 0] = 0.4 * np.arange(n)
    return base + 0.05 * rng.standard_normal((batch, n, dim))


def energy_and_forces(term, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = torch.tensor(pos, dtype=torch.float64, requires_grad=True)
    e = term(x)
    (grad,) = torch.autograd.grad(e.sum(), x)
    return e.detach().numpy(), -grad.numpy()


def assert_rel_close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-12) -> None:
    scale = np.abs(b).max()
    assert np.abs(a - b).max() <= rtol * scale, np.abs(a - b).max() / scale


@pytest.fixture(scope="module")
def pool_term():
    term = make_term(n_workers=2)
    yield term
    term.close()


def test_construction_warnings():
    with pytest.warns(UserWarning, match=r"HarmonicBondForce.*OpenMM fallback.*orders of magnitude slower"):
        make_term()
    atoms = Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 3.8]])
    atoms.calc = LennardJones(rc=100.0)
    with pytest.warns(UserWarning, match=r"'lj'.*ASE fallback.*orders of magnitude slower"):
        ASEFallbackTerm(atoms, 0.025, "lj")


def test_in_process_matches_direct_openmm():
    term = make_term(n_workers=2)
    pos = chain_positions(7)
    e, f = energy_and_forces(term, pos)
    e_ref, f_ref = reference(morse_system(), pos)
    assert e.shape == (7,) and f.shape == (7, N, 3)
    assert_rel_close(e, e_ref)
    assert_rel_close(f, f_ref)
    assert term._pool is None  # small batch: no pool started


def test_pool_matches_direct_openmm(pool_term):
    pos = chain_positions(600, seed=1)
    n_before = pool_term.n_evaluated
    e, f = energy_and_forces(pool_term, pos)
    assert pool_term._pool is not None
    e_ref, f_ref = reference(morse_system(), pos)
    assert_rel_close(e, e_ref)
    assert_rel_close(f, f_ref)
    assert pool_term.n_evaluated - n_before == 600 and pool_term.n_nonfinite == pool_term.n_errors == 0


def test_dtype_and_device_follow_input():
    term = make_term()
    x = torch.tensor(chain_positions(3), dtype=torch.float32, requires_grad=True)
    e = term(x)
    (grad,) = torch.autograd.grad(e.sum(), x)
    assert e.dtype == grad.dtype == torch.float32
    with torch.no_grad():
        assert term(x).shape == (3,)
    with pytest.raises(ValueError, match="shape"):
        term(x.reshape(3, -1))


def test_grad_output_scales_forces():
    term = make_term()
    x = torch.tensor(chain_positions(3), requires_grad=True)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    (grad,) = torch.autograd.grad((term(x) * weights).sum(), x)
    _, f = energy_and_forces(term, x.detach().numpy())
    np.testing.assert_allclose(grad.numpy(), -f * weights.numpy()[:, None, None], rtol=1e-14)


def test_forces_match_finite_differences():
    term = make_term()
    pos = chain_positions(2, seed=3)
    _, forces = energy_and_forces(term, pos)
    h = 1e-6
    fd = np.zeros_like(pos)
    for i in range(N):
        for d in range(3):
            step = np.zeros_like(pos)
            step[:, i, d] = h
            with torch.no_grad():
                ep = term(torch.tensor(pos + step)).numpy()
                em = term(torch.tensor(pos - step)).numpy()
            fd[:, i, d] = -(ep - em) / (2 * h)
    np.testing.assert_allclose(forces, fd, rtol=1e-5, atol=1e-5 * np.abs(fd).max())


def test_two_dimensional_padding():
    system = morse_system()
    wall = openmm.CustomExternalForce("100*(z-0.1)^2")  # only sees z: 1 kJ/mol per particle at z = 0
    for i in range(N):
        wall.addParticle(i, [])
    system.addForce(wall)
    term = make_term(system, spatial_dim=2)
    pos2 = chain_positions(4, dim=2, seed=4)
    e, f = energy_and_forces(term, pos2)
    assert f.shape == (4, N, 2)
    pos3 = np.concatenate([pos2, np.zeros((4, N, 1))], axis=2)
    e_ref, f_ref = reference(system, pos3)
    assert np.all(np.abs(f_ref[:, :, 2]) > 1.0)  # the dropped z forces are not zero
    assert_rel_close(e, e_ref)
    assert_rel_close(f, f_ref[:, :, :2])
    # The wall alone gives N kJ/mol exactly when z = 0.
    e_wall, _ = reference(system, pos3)
    e_morse, _ = reference(morse_system(), pos3)
    np.testing.assert_allclose(e_wall - e_morse, N / KT, rtol=1e-12)


def test_nan_energy_gives_inf_and_warning():
    system = morse_system()
    root = openmm.CustomExternalForce("sqrt(x)")  # NaN for x < 0
    root.addParticle(N - 1, [])
    system.addForce(root)
    term = make_term(system)
    pos = chain_positions(4, seed=5)
    pos[2, N - 1, 0] = -1.0
    with pytest.warns(RuntimeWarning, match=r"1 of 4 configurations failed"):
        e, f = energy_and_forces(term, pos)
    assert e[2] == np.inf and np.all(f[2] == 0)
    good = [0, 1, 3]
    e_ref, f_ref = reference(system, pos[good])
    assert_rel_close(e[good], e_ref)
    assert_rel_close(f[good], f_ref)
    assert (term.n_nonfinite, term.n_errors, term.n_evaluated) == (1, 0, 4)


def test_openmm_exception_gives_inf_and_warning():
    term = make_term()
    evaluator = term._evaluator
    row = evaluator._row

    def failing_row(p):
        if p[0, 0] > 10:
            raise openmm.OpenMMException("particle escaped")
        return row(p)

    evaluator._row = failing_row
    pos = chain_positions(3, seed=6)
    pos[0, 0, 0] = 11.0
    with pytest.warns(RuntimeWarning, match=r"1 of 3 configurations failed.*particle escaped"):
        e, _ = energy_and_forces(term, pos)
    assert e[0] == np.inf and np.isfinite(e[1:]).all()
    assert term.n_errors == 1


def test_pickle_round_trip(pool_term):
    pos = chain_positions(300, seed=7)  # pool path
    e, f = energy_and_forces(pool_term, pos)
    for clone in (pickle.loads(pickle.dumps(pool_term)), copy.deepcopy(pool_term)):
        assert clone._pool is None and clone._evaluator._context is None
        e2, f2 = energy_and_forces(clone, pos[:10])  # in-process path rebuilds its Context
        np.testing.assert_array_equal(e2, e[:10])
        np.testing.assert_array_equal(f2, f[:10])
    assert pool_term._pool is not None  # the original keeps its pool


def test_close_restart_and_finalize_pool():
    term = make_term(n_workers=2)
    term.pool_threshold = 4
    pos = chain_positions(8, seed=8)
    e1, _ = energy_and_forces(term, pos)
    first = term._finalizer
    term.close()
    assert term._pool is None and not first.alive
    e2, _ = energy_and_forces(term, pos)  # starts a fresh pool
    np.testing.assert_array_equal(e1, e2)
    second = term._finalizer
    assert second.alive
    del term
    gc.collect()
    assert not second.alive  # garbage collection shut the pool down


# ---------------------------------------------------------------------------------------- ASE

EV_KT = 0.025852  # eV (300 K)


def argon_cluster(seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    grid = 3.8 * np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=float)
    return Atoms("Ar5", positions=grid + 0.1 * rng.standard_normal(grid.shape))


def ase_positions(batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return argon_cluster().positions + 0.15 * rng.standard_normal((batch, 5, 3))


def lj_term(calc=None) -> ASEFallbackTerm:
    atoms = argon_cluster()
    atoms.calc = calc or LennardJones(sigma=3.4, epsilon=0.0104, rc=100.0)
    return ASEFallbackTerm(atoms, EV_KT, "lj")


def test_ase_matches_calculator():
    term = lj_term()
    pos = ase_positions(4, seed=1)
    e, f = energy_and_forces(term, pos)
    atoms = argon_cluster()
    atoms.calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=100.0)
    for i, p in enumerate(pos):
        atoms.set_positions(p)
        assert abs(e[i] - atoms.get_potential_energy() / EV_KT) <= 1e-12 * abs(e[i])
        np.testing.assert_allclose(f[i], atoms.get_forces() / EV_KT, rtol=1e-12, atol=1e-12)


def test_ase_forces_match_finite_differences():
    term = lj_term()
    pos = ase_positions(1, seed=2)
    _, forces = energy_and_forces(term, pos)
    h = 1e-5
    fd = np.zeros_like(pos)
    for i in range(5):
        for d in range(3):
            step = np.zeros_like(pos)
            step[:, i, d] = h
            with torch.no_grad():
                fd[:, i, d] = -(term(torch.tensor(pos + step)) - term(torch.tensor(pos - step))).numpy() / (2 * h)
    np.testing.assert_allclose(forces, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())


class RaisingLJ(LennardJones):
    """Lennard-Jones that refuses configurations with the first atom at x < -5 Å."""

    def calculate(self, atoms=None, properties=None, system_changes=None):
        if atoms.positions[0, 0] < -5.0:
            raise RuntimeError("first atom left the box")
        super().calculate(atoms, properties, system_changes)


def test_ase_calculator_error_gives_inf_and_warning():
    term = lj_term(RaisingLJ(sigma=3.4, epsilon=0.0104, rc=100.0))
    pos = ase_positions(3, seed=3)
    pos[1, 0, 0] = -10.0
    with pytest.warns(RuntimeWarning, match=r"1 of 3 configurations failed.*first atom left the box"):
        e, f = energy_and_forces(term, pos)
    assert e[1] == np.inf and np.all(f[1] == 0)
    assert np.isfinite(e[[0, 2]]).all() and term.n_errors == 1
    reference_term = lj_term()
    e_ref, _ = energy_and_forces(reference_term, pos[[0, 2]])
    np.testing.assert_array_equal(e[[0, 2]], e_ref)
