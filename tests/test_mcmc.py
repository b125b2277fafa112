"""Tests of the reference samplers (iwsm_md.mcmc): exactness on targets with known moments,
parallel tempering across a barrier, the autocorrelation estimator, DW-4 against the published
set, OpenMM Langevin MD, and the rejection of non-finite proposals."""
import math

import numpy as np
import openmm
import pytest
import torch
from openmm import unit
from scipy.integrate import trapezoid
from scipy.signal import lfilter

from iwsm_md import mcmc
from iwsm_md.energies import from_openmm
from iwsm_md.energies.base import Energy, from_function
from iwsm_md.metrics import centre, distance_tvd, energy_tvd
from iwsm_md.potentials import REDUCED_TEMPERATURE, builtin_energy, double_well, lj_cluster

from paths import REFERENCE


def gaussian(n_particles=1, spatial_dim=3):
    return from_function(lambda x: 0.5 * (x * x).sum(1), n_particles=n_particles, spatial_dim=spatial_dim)


def coordinate_trace(result, chains):
    """(steps, chains, dim) from time-major samples recorded every step."""
    return result.samples.reshape(-1, chains, result.samples.shape[1])


def assert_standard_normal(result, chains, z=5.0):
    """Mean 0 and variance 1 per coordinate within z standard errors (τ measured per coordinate)."""
    trace = coordinate_trace(result, chains)
    n = trace.shape[0] * chains
    for k in range(trace.shape[2]):
        x = trace[:, :, k]
        tau = mcmc.integrated_autocorrelation(x)
        tau2 = mcmc.integrated_autocorrelation(x * x)
        assert abs(x.mean().item()) < z * math.sqrt(tau / n), (k, x.mean().item(), tau)
        assert abs(x.var().item() - 1.0) < z * math.sqrt(2.0 * tau2 / n) + 1e-3, (k, x.var().item(), tau2)


# ------------------------------------------------------------------------------- (a) Gaussians


@pytest.mark.parametrize("kind", ["metropolis", "single", "mala"])
def test_standard_gaussian_moments(kind):
    chains = 256
    if kind == "single":  # three particles in 2D, one moved at a time (the whole-energy fallback)
        energy, x0 = gaussian(3, 2), torch.zeros(chains, 6)
        r = mcmc.metropolis(energy, x0, 300, 0.5, burn_in=150, single_particle=True, seed=1)
    elif kind == "metropolis":
        energy, x0 = gaussian(1, 3), torch.zeros(chains, 3)
        r = mcmc.metropolis(energy, x0, 400, 0.5, burn_in=200, seed=2)
    else:
        energy, x0 = gaussian(1, 2), torch.zeros(chains, 2)
        r = mcmc.mala(energy, x0, 400, 0.5, burn_in=200, seed=3)
    assert r.samples.dtype == torch.float64
    assert r.samples.shape == (r.energy_trace.shape[0] * chains, energy.dim)
    assert 0.25 < r.acceptance < 0.65
    assert r.n_nonfinite == 0 and r.wall_seconds > 0
    assert 1.0 <= r.autocorrelation_time < 30.0
    assert 0 < r.n_effective <= r.samples.shape[0]
    torch.testing.assert_close(r.energies, energy(r.samples))
    assert_standard_normal(r, chains)


def test_step_size_adapts_then_freezes():
    energy, x0 = gaussian(1, 3), torch.zeros(128, 3)
    far = mcmc.metropolis(energy, x0, 50, 0.01, burn_in=300, target_acceptance=0.4, seed=0)
    assert far.step_size > 0.5  # grown from 0.01 toward the ~1.9 that gives 40 % in 3D
    assert abs(far.acceptance - 0.4) < 0.1
    frozen = mcmc.metropolis(energy, x0, 50, 0.01, burn_in=0, seed=0)
    assert frozen.step_size == pytest.approx(0.01)
    fixed = mcmc.metropolis(energy, x0, 50, 0.01, burn_in=100, adapt=False, seed=0)
    assert fixed.step_size == pytest.approx(0.01) and fixed.acceptance > 0.95


def test_translation_invariant_chains_stay_com_free():
    energy = builtin_energy("dw4")
    x0 = torch.from_numpy(np.load(REFERENCE / "val_split_DW4.npy")[:64]).double() + 5.0  # off-centre
    for r in (mcmc.metropolis(energy, x0, 20, 0.3, single_particle=True, seed=0),
              mcmc.metropolis(energy, x0, 20, 0.3, seed=0),
              mcmc.mala(energy, x0, 20, 0.1, seed=0)):
        com = r.samples.reshape(-1, 4, 2).mean(1)
        assert com.abs().max() < 1e-10


def test_float32_runs():
    energy = builtin_energy("lj13")
    x0 = torch.from_numpy(np.load(REFERENCE / "val_split_LJ13-1000.npy")[:32])
    for r in (mcmc.metropolis(energy, x0, 5, 0.1, single_particle=True, dtype=torch.float32, seed=0),
              mcmc.mala(energy, x0, 5, 0.02, dtype=torch.float32, seed=0)):
        assert r.samples.dtype == torch.float32 and torch.isfinite(r.samples).all()
        assert r.acceptance > 0.1


# ------------------------------------------------------------------------------- single-particle ΔE


@pytest.mark.parametrize("name,temperatures", [("lj13", None), ("dw4", [1.0, 1.5, 2.5])])
def test_single_particle_energy_bookkeeping_is_exact(name, temperatures):
    """The O(N) energy updates (pair cache + re-evaluated restraint), replica swaps included,
    agree with full evaluations after many moves without any refresh."""
    energy = builtin_energy(name)
    file = "val_split_LJ13-1000.npy" if name == "lj13" else "val_split_DW4.npy"
    x0 = torch.from_numpy(np.load(REFERENCE / file)[:64]).double()
    r = mcmc.metropolis(energy, x0, 30, 0.2, single_particle=True, burn_in=10, temperatures=temperatures,
                        refresh_every=10**9, seed=4)
    assert r.acceptance > 0.1
    torch.testing.assert_close(r.energies, energy(r.samples), rtol=0, atol=1e-9)
    torch.testing.assert_close(r.energy_trace[-1], energy(r.state[0]), rtol=0, atol=1e-9)
    if temperatures:
        assert all(0.0 < a < 1.0 for a in r.swap_acceptance)


# ------------------------------------------------------------------------------- (b) tempering


def tilted_double_well(x):
    """E(x) = 6 (x² − 1)² + x in kT: wells at ±1, barrier ~6 kT, the left well favoured."""
    return 6.0 * (x[:, 0] ** 2 - 1.0) ** 2 + x[:, 0]


def left_weight():
    grid = np.linspace(-4.0, 4.0, 400_001)
    w = np.exp(-(6.0 * (grid**2 - 1.0) ** 2 + grid))
    return float(trapezoid(w * (grid < 0), grid) / trapezoid(w, grid))


@pytest.mark.parametrize("method", ["metropolis", "mala"])
def test_parallel_tempering_populates_both_wells(method):
    energy = from_function(tilted_double_well, dim=1)
    chains = 256
    x0 = torch.ones(chains, 1)  # every chain starts in the unfavoured right well
    run = mcmc.metropolis if method == "metropolis" else mcmc.mala
    r = run(energy, x0, 1500, 0.3, burn_in=300, temperatures=[1.0, 1.7, 3.0, 5.0, 8.0], seed=5)
    assert r.samples.shape == (1500 * chains, 1)
    assert r.temperatures[0] == 1.0 and len(r.step_sizes) == 5
    assert r.step_sizes[-1] > r.step_sizes[0]  # hotter replicas take larger steps
    assert all(0.1 < a < 1.0 for a in r.swap_acceptance)
    left = (r.samples[:, 0] < 0).double()
    tau = mcmc.integrated_autocorrelation(left.reshape(-1, chains))
    err = math.sqrt(left.mean().item() * (1 - left.mean().item()) * tau / left.numel())
    expected = left_weight()
    assert 0.8 < expected < 0.95
    assert abs(left.mean().item() - expected) < 5 * err + 0.005, (left.mean().item(), expected, err)

    if method == "mala":  # local moves without tempering: the barrier holds (Metropolis' long
        stuck = run(energy, x0, 200, 0.3, burn_in=100, seed=5)  # steps in 1D jump across it)
        assert (stuck.samples[:, 0] < 0).double().mean() < 0.2


def test_temperature_ladder_must_start_at_one():
    energy = from_function(tilted_double_well, dim=1)
    with pytest.raises(ValueError, match="start at 1"):
        mcmc.metropolis(energy, torch.ones(4, 1), 5, temperatures=[2.0, 4.0])


# ------------------------------------------------------------------------------- (c) diagnostics


def ar1(phi, n_steps, chains, seed):
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n_steps + 1000, chains)) * math.sqrt(1 - phi**2)
    return lfilter([1.0], [1.0, -phi], noise, axis=0)[1000:]


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_autocorrelation_time_of_ar1(phi):
    series = ar1(phi, 20_000, 16, seed=int(phi * 10))
    tau = mcmc.integrated_autocorrelation(series)
    expected = (1 + phi) / (1 - phi)
    assert tau == pytest.approx(expected, rel=0.08)
    assert mcmc.effective_sample_size(series) == pytest.approx(series.size / tau)
    single = mcmc.integrated_autocorrelation(torch.from_numpy(series[:, 0]))
    assert single == pytest.approx(expected, rel=0.25)
    assert mcmc.integrated_autocorrelation(series, centre="chain") == pytest.approx(expected, rel=0.08)


def test_autocorrelation_edge_cases():
    assert mcmc.integrated_autocorrelation(np.ones((100, 3))) == math.inf
    assert mcmc.effective_sample_size(np.ones(100)) == 0.0
    with pytest.warns(RuntimeWarning, match="too short"):
        mcmc.integrated_autocorrelation(ar1(0.99, 200, 1, seed=0))


def test_thin_and_equilibration_time():
    series = ar1(0.5, 4000, 8, seed=3)
    transient = series.copy()
    transient[:1000] += 20.0 * np.exp(-np.arange(1000) / 100.0)[:, None]
    assert mcmc.equilibration_time(series) <= 200
    assert mcmc.equilibration_time(transient) >= 300
    x = torch.arange(10)
    assert mcmc.thin(x, 3).tolist() == [0, 3, 6, 9]
    assert mcmc.thin(x, 2.2).tolist() == [0, 3, 6, 9]
    assert mcmc.thin(x, 0.5).tolist() == x.tolist()


def test_sample_reference_returns_thinned_samples():
    energy = gaussian(1, 3)
    r = mcmc.sample_reference(energy, 1000, chains=64, method="metropolis", burn_in=200, seed=0)
    assert r.samples.shape == (1000, 3) and r.energies.shape == (1000,)
    assert r.thin >= math.ceil(r.autocorrelation_time / 2)
    assert 0 < r.n_effective <= 1000
    assert abs(r.samples.var(0).mean().item() - 1.0) < 0.15
    m = mcmc.sample_reference(energy, 500, chains=64, method="mala", burn_in=100, seed=1)
    assert m.samples.shape == (500, 3) and m.method == "mala"


# ------------------------------------------------------------------------------- (d) DW-4


@pytest.mark.parametrize("method", ["mala", "single"])
def test_dw4_matches_published_set(method):
    energy = builtin_energy("dw4")
    val = centre(np.load(REFERENCE / "val_split_DW4.npy"), 4, 2)
    test = centre(np.load(REFERENCE / "test_split_DW4.npy"), 4, 2)
    x0 = torch.from_numpy(test[:1024])
    if method == "mala":
        r = mcmc.mala(energy, x0, 100, 0.1, burn_in=50, thin=25, seed=6)
    else:
        r = mcmc.metropolis(energy, x0, 60, 0.3, burn_in=30, thin=15, single_particle=True, seed=6)
    assert r.samples.shape == (4096, 8)
    assert energy_tvd(energy, r.samples.numpy(), val) <= 0.1
    assert distance_tvd(r.samples.numpy(), val, 4, 2) <= 0.05
    assert abs(r.energies.mean().item() - (-22.47)) < 0.3


# ------------------------------------------------------------------------------- (e) OpenMM MD


def test_langevin_openmm_double_well_is_planar():
    r = mcmc.langevin_openmm(double_well(4), REDUCED_TEMPERATURE, 20, stride=50, burn_in=500, spatial_dim=2)
    assert r.samples.shape == (20, 8) and r.samples.dtype == torch.float64
    assert torch.isfinite(r.samples).all() and torch.isfinite(r.energies).all()
    energy = from_openmm(double_well(4), REDUCED_TEMPERATURE, spatial_dim=2)
    torch.testing.assert_close(r.energies, energy(r.samples), rtol=1e-6, atol=1e-6)  # nm in, kT out


def test_planar_integrator_keeps_z_exactly_zero():
    system = double_well(4)
    integ = mcmc.langevin_integrator(REDUCED_TEMPERATURE, 1.0, 0.005, n_particles=4, spatial_dim=2)
    integ.setRandomNumberSeed(7)
    context = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    square = np.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [4, 4, 0]], dtype=float)
    context.setPositions(square * unit.nanometer)
    context.setVelocities(np.array([[1.0, 0.5, 0.0]] * 4) * unit.nanometer / unit.picosecond)
    integ.step(300)
    state = context.getState(getPositions=True, getVelocities=True)
    pos = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    vel = state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
    assert np.all(pos[:, 2] == 0.0) and np.all(vel[:, 2] == 0.0)
    assert np.abs(pos[:, :2] - square[:, :2]).max() > 1e-3  # x, y did move


def test_langevin_openmm_lj_cluster():
    r = mcmc.langevin_openmm(lj_cluster(5), REDUCED_TEMPERATURE, 10, stride=20, burn_in=200, platform="CPU",
                             platform_properties={"Threads": "1"}, seed=1)
    assert r.samples.shape == (10, 15)
    assert torch.isfinite(r.samples).all() and torch.isfinite(r.energies).all()
    assert r.energies.max() < 0  # a bound cluster, not an exploded one
    start = np.load(REFERENCE / "val_split_LJ13-1000.npy")[0].reshape(13, 3)
    s = mcmc.langevin_openmm(lj_cluster(13), REDUCED_TEMPERATURE, 3, stride=10, burn_in=0, positions=start,
                             minimize=False)
    assert s.samples.shape == (3, 39)


# ------------------------------------------------------------------------------- (f) non-finite


class Walled(Energy):
    """Standard normal in 2D with NaN (or inf) energy for x_0 > 0.5: every proposal there must be
    rejected."""

    def __init__(self, bad=math.nan):
        super().__init__(1, 2)
        self.bad = bad

    def _energy(self, pos):
        x = pos.reshape(pos.shape[0], -1)
        e = 0.5 * (x * x).sum(1)
        return torch.where(x[:, 0] > 0.5, torch.full_like(e, self.bad), e)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("method", ["metropolis", "single", "mala"])
def test_nonfinite_proposals_are_rejected_and_counted(bad, method):
    energy = Walled(bad)
    x0 = torch.zeros(128, 2)
    if method == "mala":
        r = mcmc.mala(energy, x0, 100, 0.5, burn_in=20, seed=8)
    else:
        r = mcmc.metropolis(energy, x0, 100, 0.5, burn_in=20, single_particle=method == "single", seed=8)
    assert r.n_nonfinite > 0
    assert r.samples[:, 0].max() <= 0.5
    assert torch.isfinite(r.energies).all() and torch.isfinite(r.energy_trace).all()
    assert r.n_proposals == 100 * 128


def test_nonfinite_start_is_refused():
    with pytest.raises(ValueError, match="non-finite"):
        mcmc.metropolis(Walled(), torch.ones(4, 2), 5)
    with pytest.raises(ValueError, match="NaN"):
        mcmc.mala(gaussian(1, 2), torch.full((4, 2), math.nan), 5)


def test_global_centring_sees_spread_between_chains():
    """Chains whose means differ (a slow mode longer than the trace) look independent to per-chain
    centring but not to global centring (the default); on well-mixed chains both agree."""
    series = ar1(0.5, 5000, 16, seed=9)
    assert mcmc.integrated_autocorrelation(series, centre="chain") == pytest.approx(3.0, rel=0.1)
    offsets = series + np.random.default_rng(1).standard_normal(16) * 2.0
    assert mcmc.integrated_autocorrelation(offsets, centre="chain") == pytest.approx(3.0, rel=0.1)
    with pytest.warns(RuntimeWarning, match="too short"):
        assert mcmc.integrated_autocorrelation(offsets) > 30.0
    with pytest.raises(ValueError, match="centre"):
        mcmc.integrated_autocorrelation(series, centre="mean")
