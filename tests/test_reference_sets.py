"""The project's own reference sets `data/reference/{dw4,lj13,lj55}.npz` (made by
`data/make_reference.py`): shape, dtype, finite, centre-of-mass free, stored energies equal to the
built-in energy recomputed on the stored positions, metadata present, and for DW-4 and LJ-13
agreement with the published val set. The files are committed: a missing one fails."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from iwsm_md.metrics import centre, distance_tvd, energy_tvd
from iwsm_md.potentials import builtin_energy

from paths import REFERENCE

DATA = Path(__file__).resolve().parents[1] / "data" / "reference"
SYSTEMS = {"dw4": (4, 2), "lj13": (13, 3), "lj55": (55, 3)}
PUBLISHED_VAL = {"dw4": "val_split_DW4.npy", "lj13": "val_split_LJ13-1000.npy"}
META = ("command", "method", "chains", "thin", "autocorrelation_time", "n_effective", "burn_in", "wall_seconds",
        "hardware", "seed", "git_commit", "checks")
# E-TVD / D-TVD bounds against the published val set at n = 10,000. DW-4's E-TVD bound is 0.06, not
# 0.05: the published DW-4 sets are off equilibrium in a slow coordinate (configurations with >= 4
# of the 6 pair distances below 4: 0.516 of val, 0.519 of test, 0.448 ± 0.002 under single-particle,
# full-configuration and MALA chains, tempered or not, from Gaussian or from published starts), so
# independent exact 10k sets score E-TVD 0.053 ± 0.004 against val (0.045 ± 0.004 against each
# other) and D-TVD 0.034 ± 0.002 (0.018 ± 0.002 against each other); see data/reference/README.md.
BOUNDS = {"dw4": (0.06, 0.05), "lj13": (0.05, 0.05)}
# n_effective / n at least: LJ-55's set is thinned by less than its autocorrelation time to fit the
# 40-minute budget of one core (see its README section)
MIN_EFFECTIVE = {"dw4": 0.75, "lj13": 0.75, "lj55": 0.3}


def load(name):
    path = DATA / f"{name}.npz"
    assert path.exists(), f"{path} is missing: make it with `python3 data/make_reference.py {name}`"
    return np.load(path)


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_reference_set_is_well_formed(name):
    ref = load(name)
    n_particles, spatial_dim = SYSTEMS[name]
    x, e = ref["positions"], ref["energies"]
    assert x.dtype == np.float32 and e.dtype == np.float32
    assert x.shape == (10_000, n_particles * spatial_dim) and e.shape == (10_000,)
    assert np.isfinite(x).all() and np.isfinite(e).all()
    com = x.astype(np.float64).reshape(-1, n_particles, spatial_dim).mean(1)
    assert np.abs(com).max() < 1e-5
    assert len(np.unique(x, axis=0)) == x.shape[0]  # no repeated rows
    for key in META:
        assert key in ref.files, key
    assert str(ref["command"]).startswith(f"python3 data/make_reference.py {name}")
    assert MIN_EFFECTIVE[name] * x.shape[0] < float(ref["n_effective"]) <= x.shape[0]
    checks = json.loads(str(ref["checks"]))
    assert "groups" in checks
    assert DATA.joinpath(f"{name}.npz").stat().st_size < 8e6


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_stored_energies_match_the_builtin_energy(name):
    ref = load(name)
    energy = builtin_energy(name)
    with torch.no_grad():
        e = energy(torch.from_numpy(ref["positions"]).double()).numpy()
    np.testing.assert_allclose(ref["energies"], e, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", sorted(PUBLISHED_VAL))
def test_agrees_with_published_val_set(name):
    ref = load(name)
    n_particles, spatial_dim = SYSTEMS[name]
    energy = builtin_energy(name)
    x = ref["positions"].astype(np.float64)
    val = centre(np.load(REFERENCE / PUBLISHED_VAL[name]), n_particles, spatial_dim)
    e_bound, d_bound = BOUNDS[name]
    assert energy_tvd(energy, x, val) <= e_bound
    assert distance_tvd(x, val, n_particles, spatial_dim) <= d_bound
