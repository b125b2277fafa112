"""Tests of the benchmark-system builders against independent implementations and published data."""

from pathlib import Path

import numpy as np
import openmm
import pytest
import torch
from ase import units as ase_units
from openmm import unit
from scipy import stats
from scipy.special import logsumexp

from iwsm_md.energies.ase_calculators import HarmonicCentroidRestraint
from iwsm_md.potentials import (
    ASE_REDUCED_TEMPERATURE,
    REDUCED_TEMPERATURE,
    GMMEnergy,
    double_well,
    gmm,
    lj_cluster,
    lj_cluster_atoms,
)

from paths import REFERENCE
KJ = unit.kilojoule_per_mole


# ---------------------------------------------------------------- independent numpy energies (DESIGN.md)

def _pair_distances(x):
    """x (B, n, D) -> distances of the pairs i<j, (B, n(n-1)/2)."""
    i, j = np.triu_indices(x.shape[1], k=1)
    return np.linalg.norm(x[:, i] - x[:, j], axis=-1)


def lj_numpy(x):
    """LJ-n of DESIGN.md: Σ_{i≠j}[(1/d)^12 − 2(1/d)^6] + 0.5 Σ|x_i − x̄|²; x (B, n, 3)."""
    d = _pair_distances(x)
    pair = 2.0 * np.sum(d**-12 - 2.0 * d**-6, axis=1)
    centred = x - x.mean(axis=1, keepdims=True)
    return pair + 0.5 * np.sum(centred**2, axis=(1, 2))


def dw_numpy(x):
    """DW-n of DESIGN.md: Σ_{i<j} 0.9(d−4)^4 − 4(d−4)^2; x (B, n, D)."""
    d = _pair_distances(x)
    return np.sum(0.9 * (d - 4.0) ** 4 - 4.0 * (d - 4.0) ** 2, axis=1)


def random_cluster(n, rng, min_dist=0.85, dim=3):
    """One random configuration (n, dim) with all pair distances >= min_dist, by sequential rejection."""
    side = 1.3 * n ** (1.0 / dim)
    pts = []
    while len(pts) < n:
        p = rng.uniform(0.0, side, size=dim)
        if all(np.linalg.norm(p - q) >= min_dist for q in pts):
            pts.append(p)
    return np.array(pts)


def to_3d(x):
    """(B, n, 2) -> (B, n, 3) with z = 0."""
    return np.concatenate([x, np.zeros(x.shape[:-1] + (1,))], axis=-1)


class OpenMMEvaluator:
    """Energies (kJ/mol) and forces (kJ/mol/nm) of an OpenMM System on the Reference platform."""

    def __init__(self, system):
        platform = openmm.Platform.getPlatformByName("Reference")
        self.context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform)

    def energies(self, xs):
        out = np.empty(len(xs))
        for b, x in enumerate(xs):
            self.context.setPositions(np.asarray(x, dtype=float))
            out[b] = self.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
        return out

    def forces(self, x):
        self.context.setPositions(np.asarray(x, dtype=float))
        f = self.context.getState(getForces=True).getForces(asNumpy=True)
        return f.value_in_unit(KJ / unit.nanometer)


def _reference(name):
    return np.load(REFERENCE / name).astype(np.float64)


# ---------------------------------------------------------------- temperatures

def test_reduced_temperatures_give_unit_kt():
    kt_openmm = (unit.BOLTZMANN_CONSTANT_kB * unit.AVOGADRO_CONSTANT_NA * REDUCED_TEMPERATURE * unit.kelvin)
    assert kt_openmm.value_in_unit(KJ) == pytest.approx(1.0, rel=1e-12)
    assert REDUCED_TEMPERATURE == pytest.approx(120.27, abs=0.01)
    assert ase_units.kB * ASE_REDUCED_TEMPERATURE == pytest.approx(1.0, rel=1e-12)
    assert ASE_REDUCED_TEMPERATURE == pytest.approx(11604.5, abs=0.1)


# ---------------------------------------------------------------- OpenMM systems

def test_systems_structure():
    lj = lj_cluster(13)
    assert lj.getNumParticles() == 13
    assert all(lj.getParticleMass(i).value_in_unit(unit.amu) == 1.0 for i in range(13))
    names = {lj.getForce(i).getName() for i in range(lj.getNumForces())}
    assert names == {"LennardJones", "CentroidRestraint"}
    dw = double_well()
    assert dw.getNumParticles() == 4
    assert dw.getForce(0).getNonbondedMethod() == openmm.CustomNonbondedForce.NoCutoff


@pytest.mark.parametrize("n", [13, 55])
def test_lj_random_configurations_match_numpy(n):
    rng = np.random.default_rng(n)
    xs = np.stack([random_cluster(n, rng) for _ in range(5)])
    np.testing.assert_allclose(OpenMMEvaluator(lj_cluster(n)).energies(xs), lj_numpy(xs), rtol=1e-10, atol=0)


def test_lj_restraint_not_translation_invariant_but_pairs_are():
    # the centroid restraint depends on internal coordinates only: a rigid shift changes nothing
    rng = np.random.default_rng(1)
    x = random_cluster(13, rng)[None]
    ev = OpenMMEvaluator(lj_cluster(13))
    np.testing.assert_allclose(ev.energies(x + 3.7), ev.energies(x), rtol=1e-10)


def test_dw_random_configurations_match_numpy():
    rng = np.random.default_rng(4)
    xs = to_3d(np.stack([random_cluster(4, rng, dim=2) * 3.0 for _ in range(10)]))
    np.testing.assert_allclose(OpenMMEvaluator(double_well(4)).energies(xs), dw_numpy(xs), rtol=1e-10, atol=0)


def test_reference_rows_match_numpy():
    lj = _reference("test_split_LJ13-1000.npy")[:50].reshape(-1, 13, 3)
    np.testing.assert_allclose(OpenMMEvaluator(lj_cluster(13)).energies(lj), lj_numpy(lj), rtol=1e-10, atol=0)
    dw = to_3d(_reference("test_split_DW4.npy")[:50].reshape(-1, 4, 2))
    np.testing.assert_allclose(OpenMMEvaluator(double_well(4)).energies(dw), dw_numpy(dw), rtol=1e-10, atol=0)


def test_validation_set_mean_energies():
    lj = _reference("val_split_LJ13-1000.npy").reshape(-1, 13, 3)
    e_lj = OpenMMEvaluator(lj_cluster(13)).energies(lj)
    assert len(e_lj) == 10000
    assert e_lj.mean() == pytest.approx(-43.0, abs=0.3)
    dw = to_3d(_reference("val_split_DW4.npy").reshape(-1, 4, 2))
    e_dw = OpenMMEvaluator(double_well(4)).energies(dw)
    assert len(e_dw) == 10000
    assert e_dw.mean() == pytest.approx(-22.5, abs=0.3)


def _central_difference_forces(energy, x, h=1e-5):
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        grad[idx] = (energy(xp) - energy(xm)) / (2 * h)
    return -grad


def test_lj_forces_match_finite_differences():
    x = random_cluster(13, np.random.default_rng(7))
    ev = OpenMMEvaluator(lj_cluster(13))
    fd = _central_difference_forces(lambda y: ev.energies(y[None])[0], x)
    f = ev.forces(x)
    assert np.abs(f).max() > 1.0  # a non-trivial configuration
    np.testing.assert_allclose(f, fd, atol=1e-6 * np.abs(f).max(), rtol=0)


# ---------------------------------------------------------------- ASE

def test_ase_matches_openmm_energies_and_forces():
    rng = np.random.default_rng(13)
    ev = OpenMMEvaluator(lj_cluster(13))
    for x in [random_cluster(13, rng) for _ in range(3)] + [lj_cluster_atoms(13, seed=3).positions]:
        atoms = lj_cluster_atoms(13, positions=x)
        e_ase = atoms.get_potential_energy()  # eV, coordinates read as Å
        e_omm = ev.energies(x[None])[0]  # kJ/mol, the same numbers read as nm
        assert e_ase == pytest.approx(e_omm, rel=1e-9)
        f_ase, f_omm = atoms.get_forces(), ev.forces(x)
        np.testing.assert_allclose(f_ase, f_omm, atol=1e-9 * np.abs(f_omm).max(), rtol=0)


def test_ase_atoms_defaults():
    atoms = lj_cluster_atoms(13)
    assert len(atoms) == 13 and set(atoms.get_chemical_symbols()) == {"Ar"}
    assert not atoms.pbc.any() and np.allclose(atoms.cell.array, 0.0)
    pos = atoms.positions
    assert pos.shape == (13, 3)
    np.testing.assert_allclose(pos.mean(axis=0), 0.0, atol=1e-12)
    assert _pair_distances(pos[None]).min() > 0.9
    np.testing.assert_array_equal(lj_cluster_atoms(13, seed=0).positions, pos)
    assert not np.allclose(lj_cluster_atoms(13, seed=1).positions, pos)
    with pytest.raises(ValueError, match="shape"):
        lj_cluster_atoms(13, positions=np.zeros((12, 3)))


def test_harmonic_centroid_restraint_forces_match_finite_differences():
    atoms = lj_cluster_atoms(7, positions=np.random.default_rng(2).normal(size=(7, 3)))
    atoms.calc = HarmonicCentroidRestraint(k=2.5)
    x0 = atoms.positions.copy()
    centred = x0 - x0.mean(axis=0)
    assert atoms.get_potential_energy() == pytest.approx(0.5 * 2.5 * np.sum(centred**2), rel=1e-12)

    def energy(y):
        atoms.positions = y
        return atoms.get_potential_energy()

    fd = _central_difference_forces(energy, x0, h=1e-4)
    atoms.positions = x0
    np.testing.assert_allclose(atoms.get_forces(), fd, atol=1e-8, rtol=0)


# ---------------------------------------------------------------- GMM

def test_gmm_means_match_literature_and_keep_global_rng():
    state = torch.get_rng_state()
    g = gmm(40)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(0)
    expected = (torch.rand(40, 2) - 0.5) * 2 * 40
    torch.set_rng_state(state)
    assert torch.equal(g.means.to(torch.float32), expected)
    assert g.std == pytest.approx(np.log1p(np.e), rel=1e-15)  # softplus(1)
    assert g.log_z == 0.0
    assert isinstance(g, GMMEnergy) and g.dim == 2 and g.n_particles == 1 and not g.translation_invariant
    assert g.length_unit is None
    assert float(gmm(80).means.abs().max()) > 40.0  # loc_scale defaults to n_modes


def _scipy_log_density(g, x):
    means, std = g.means.numpy(), g.std
    logs = np.stack([stats.multivariate_normal(m, std**2 * np.eye(2)).logpdf(x) for m in means], axis=1)
    return logsumexp(logs, axis=1) - np.log(len(means))


def test_gmm_energy_matches_scipy_mixture():
    g = gmm(40)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-50, 50, size=(200, 2)), g.means.numpy()[:20] + rng.normal(size=(20, 2))])
    e = g(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(e, -_scipy_log_density(g, x), rtol=1e-10, atol=1e-12)
    e32 = g(torch.from_numpy(x).float())
    assert e32.dtype == torch.float32
    np.testing.assert_allclose(e32.numpy(), e, rtol=1e-5)


@pytest.mark.parametrize("sigma", [0.0, 0.7, 6.0])
def test_gmm_noised_score_is_the_gradient_of_the_convolved_mixture(sigma):
    """The mixture convolved with N(0, σ²) is the mixture with std √(std² + σ²): central finite
    differences of scipy's log density of that mixture."""
    g = gmm(40)
    wide = GMMEnergy(g.means, float(np.hypot(g.std, sigma)))
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-45, 45, size=(50, 2)), g.means.numpy()[:10] + rng.normal(size=(10, 2))])
    h = 1e-5
    fd = np.stack([(_scipy_log_density(wide, x + h * e) - _scipy_log_density(wide, x - h * e)) / (2 * h)
                   for e in np.eye(2)], axis=1)
    score = g.noised_score(torch.from_numpy(x), sigma).numpy()
    np.testing.assert_allclose(score, fd, rtol=1e-6, atol=1e-7)
    per_point = g.noised_score(torch.from_numpy(x), torch.full((len(x),), sigma, dtype=torch.float64))
    np.testing.assert_allclose(per_point.numpy(), score, rtol=1e-12)


@pytest.mark.parametrize("name", ["dw4", "lj13", "gmm40"])
def test_builtin_energies_have_second_derivatives(name):
    # the kernels' backward recomputes the gradient differentiably under create_graph: the
    # Hessian-vector products must match finite differences of the gradient
    from iwsm_md.potentials import builtin_energy

    energy = builtin_energy(name)
    g = torch.Generator().manual_seed(3)
    if name == "gmm40":
        x = energy.means[:3].double() + torch.randn(3, 2, dtype=torch.float64, generator=g)
    else:
        x = torch.as_tensor(np.load(Path(__file__).resolve().parents[1] / "data" / "reference" / f"{name}.npz")["positions"][:3], dtype=torch.float64)
    x = x + 0.01 * torch.randn(x.shape, dtype=torch.float64, generator=g)
    assert torch.autograd.gradgradcheck(energy, (x.requires_grad_(True),))


def test_gmm_is_normalised():
    g = gmm(3, loc_scale=3)
    h = 0.02
    grid = torch.arange(-12.0, 12.0 + h / 2, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    e = g(torch.stack([xx.flatten(), yy.flatten()], dim=1))
    assert float(torch.exp(-e).sum() * h * h) == pytest.approx(1.0, abs=1e-6)


def test_gmm_samples_follow_the_mixture():
    g = gmm(40)
    n = 200_000
    x = g.sample(n, generator=torch.Generator().manual_seed(0)).numpy()
    assert x.shape == (n, 2)
    means, std = g.means.numpy(), g.std
    total_sd = np.sqrt(means.var(axis=0) + std**2)
    np.testing.assert_array_less(np.abs(x.mean(axis=0) - means.mean(axis=0)), 5 * total_sd / np.sqrt(n))
    # 2D histogram against bin probabilities from the exact per-mode normal CDFs
    edges = np.linspace(-45, 45, 19)
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
    cx = np.diff(stats.norm.cdf((edges[None, :] - means[:, :1]) / std), axis=1)  # (modes, bins)
    cy = np.diff(stats.norm.cdf((edges[None, :] - means[:, 1:]) / std), axis=1)
    p = np.einsum("mi,mj->ij", cx, cy) / len(means)
    assert p.sum() > 0.999
    np.testing.assert_array_less(np.abs(counts - n * p), 5 * np.sqrt(n * p) + 3)
    y = g.sample(10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y, g.sample(10, generator=torch.Generator().manual_seed(1)))  # reproducible
    assert g.sample(10, dtype=torch.float32).dtype == torch.float32


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("n", [0, 1])
def test_bad_n_particles(n):
    with pytest.raises(ValueError, match="n_particles"):
        lj_cluster(n)
    with pytest.raises(ValueError, match="n_particles"):
        double_well(n)
    with pytest.raises(ValueError, match="n_particles"):
        lj_cluster_atoms(n)


def test_non_integer_n_particles():
    with pytest.raises(TypeError, match="integer"):
        lj_cluster(2.5)


def test_bad_n_modes():
    with pytest.raises(ValueError, match="n_modes"):
        gmm(0)
    with pytest.raises(ValueError, match="loc_scale"):
        gmm(3, loc_scale=-1.0)
