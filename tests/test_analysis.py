"""iwsm_md.analysis: histograms agree with the metrics' TVDs, g(r) is normalised as documented and
matches the ideal gas in a ball/disc, and the plots of the LJ-13 reference against itself."""
import math

import mdtraj as md
import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy.integrate import quad

from iwsm_md import analysis, io, metrics
from iwsm_md.energies import from_function
from iwsm_md.potentials import builtin_energy

from paths import REFERENCE


@pytest.fixture(scope="module")
def lj13():
    """The published LJ-13 reference (first 2000 rows) and its energies (kT)."""
    x = np.load(REFERENCE / "val_split_LJ13-1000.npy")[:2000].astype(np.float64)
    return x, metrics.energies(builtin_energy("lj13"), x)


def uniform_in_ball(n_frames, n_particles, spatial_dim, radius, seed=0):
    """Ideal gas: `(n_frames, n_particles*spatial_dim)` points uniform in a ball (disc) of `radius`."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n_frames * n_particles, spatial_dim))
    v *= (radius * rng.uniform(size=len(v)) ** (1 / spatial_dim) / np.linalg.norm(v, axis=1))[:, None]
    return v.reshape(n_frames, -1)


def ideal_gas_pair_density(s, spatial_dim):
    """Density of the distance between two uniform points in the unit ball (3-D) or disc (2-D)."""
    if spatial_dim == 3:
        return 3 * s**2 - 9 / 4 * s**3 + 3 / 16 * s**5
    return 4 * s / math.pi * (math.acos(s / 2) - s / 2 * math.sqrt(1 - s**2 / 4))


# ------------------------------------------------------------------------------ histograms


def test_reference_against_itself_scores_zero(lj13):
    x, e = lj13
    h = analysis.energy_histogram(e, e)
    assert h.tvd == 0.0 and h.below == h.above == 0.0 and len(h.edges) == 46  # ceil(sqrt(2000)) = 45 bins
    np.testing.assert_array_equal(h.density, h.reference_density)
    assert (h.density * np.diff(h.edges)).sum() == pytest.approx(1.0)
    d = analysis.pair_distance_histogram(x, x, 13, 3)
    assert d.tvd == 0.0 and (d.density * np.diff(d.edges)).sum() == pytest.approx(1.0)


def test_tvds_are_the_metrics_tvds(lj13):
    x, e = lj13
    y = 1.05 * x[:1000]  # a stretched sample: some mass outside the reference range
    energy = from_function(lambda z: (z**2).sum(1), n_particles=13, spatial_dim=3)
    h = analysis.energy_histogram(metrics.energies(energy, y), metrics.energies(energy, x))
    assert h.tvd == metrics.energy_tvd(energy, y, x) > 0
    d = analysis.pair_distance_histogram(y, x, 13, 3)
    assert d.tvd == metrics.distance_tvd(y, x, 13, 3) > 0
    assert d.above > 0 and (d.density * np.diff(d.edges)).sum() + d.below + d.above == pytest.approx(1.0)


def test_nonfinite_sample_energies_land_above():
    h = analysis.energy_histogram([0.5, np.nan, np.inf, -np.inf], np.linspace(0, 1, 100))
    assert (h.below, h.above) == (0.25, 0.5) and h.tvd == pytest.approx(0.9)  # 0.5 (0.15 + 0.9 + 0.75)


# ------------------------------------------------------------------------------ g(r)


@pytest.mark.parametrize("spatial_dim", [2, 3])
def test_rdf_normalisation_and_numpy_mdtraj_agree(spatial_dim):
    n = 6
    x = uniform_in_ball(50, n, spatial_dim, radius=1.0, seed=spatial_dim)
    rdf = analysis.radial_distribution(x, n, spatial_dim, r_max=2.0, n_bins=40)
    volume = np.diff((4 / 3 * np.pi * rdf.edges**3) if spatial_dim == 3 else (np.pi * rdf.edges**2))
    n_pairs = n * (n - 1) // 2
    assert n_pairs * (rdf.g * volume).sum() == pytest.approx(n_pairs)  # every pair lies within r_max

    traj = io.to_mdtraj(x, n_particles=n, spatial_dim=spatial_dim)
    d = md.compute_distances(traj, np.array(np.triu_indices(n, 1)).T, periodic=False)
    np.testing.assert_allclose(d, metrics.pair_distances(x, n, spatial_dim), atol=1e-6)
    counts, _ = np.histogram(d, bins=rdf.edges)
    expected = counts / (len(x) * n_pairs * volume)
    assert np.abs(rdf.g - expected).max() <= 2 / (len(x) * n_pairs * volume.min())  # a bin-edge neighbour at most


@pytest.mark.parametrize("spatial_dim", [2, 3])
def test_rdf_of_an_ideal_gas_in_a_ball(spatial_dim):
    n, frames, r_max, bins = 6, 10_000, 2.0, 20
    rdf = analysis.radial_distribution(uniform_in_ball(frames, n, spatial_dim, 1.0), n, spatial_dim, r_max, bins)
    volume = np.diff((4 / 3 * np.pi * rdf.edges**3) if spatial_dim == 3 else (np.pi * rdf.edges**2))
    p_hat = rdf.g * volume  # fraction of pair distances in each shell
    p = np.array([quad(ideal_gas_pair_density, a, b, args=(spatial_dim,))[0] for a, b in zip(rdf.edges, rdf.edges[1:])])
    assert p.sum() == pytest.approx(1.0)
    n_independent = frames * n // 2  # pairs in a frame share particles: count only disjoint ones
    assert np.all(np.abs(p_hat - p) < 5 * np.sqrt(p * (1 - p) / n_independent) + 1e-4)


def test_rdf_bad_input():
    with pytest.raises(ValueError, match="r_max"):
        analysis.radial_distribution(np.zeros((2, 6)), 2, 3, r_max=0.0, n_bins=10)
    with pytest.raises(ValueError, match="spatial_dim"):
        analysis.radial_distribution(np.zeros((2, 4)), 4, 1, r_max=1.0, n_bins=10)


# ------------------------------------------------------------------------------ plots


def test_plots_of_the_reference_against_itself(lj13, tmp_path):
    x, e = lj13
    figures = {
        "energy": analysis.plot_energy(e, e),
        "distances": analysis.plot_pair_distances(x, x, 13, 3, length_unit="nm"),
        "rdf": analysis.plot_rdf(x, 13, 3, r_max=4.0, n_bins=80, reference=x),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure)
        assert fig.axes[0].get_title().endswith("TVD = 0.000")
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_plots_draw_on_a_given_ax(lj13):
    x, e = lj13
    fig = Figure()
    left, right = fig.subplots(1, 2)
    assert analysis.plot_energy(e[:1000] + 1, e, ax=left) is fig
    assert analysis.plot_rdf(x[:100], 13, 3, r_max=4.0, n_bins=40, ax=right) is fig
    assert "outside the reference range" in left.get_legend().get_texts()[1].get_text()
    assert right.get_title() == ""
