"""iwsm_md.io: round trips of every format within its precision, in 2-D and 3-D, nm and Å; files that
mdtraj and ASE open; bad input refused."""
import ase.io
import mdtraj as md
import numpy as np
import pytest
import torch

from iwsm_md import io

N = 5  # particles
UNITS = {"nm": 1.0, "Å": 0.1, None: 1.0}  # nm per length unit (None: reduced, written as nm)


def samples(spatial_dim, length_unit="nm", n_frames=7, seed=0):
    """LJ-cluster-sized configurations: about ±1.5 nm, whatever the unit."""
    x = np.random.default_rng(seed).uniform(-1.5, 1.5, size=(n_frames, N * spatial_dim))
    return x / UNITS[length_unit]


def tolerance(suffix, x, length_unit):
    """Largest round-trip error allowed, in the samples' unit: DCD float32 (relative), PDB's 1e-3 Å
    fields (5e-5 nm, plus mdtraj's float32), XYZ 1e-15 Å and extended XYZ 1e-8 Å fields."""
    nm = {".dcd": 2e-7 * np.abs(x).max() * UNITS[length_unit], ".pdb": 5e-5 + 1e-6,
          ".xyz": 1e-12, ".extxyz": 1e-9}[suffix]
    return nm / UNITS[length_unit]


@pytest.mark.parametrize("length_unit", ["nm", "Å", None])
@pytest.mark.parametrize("spatial_dim", [2, 3])
@pytest.mark.parametrize("suffix", io.FORMATS)
def test_round_trip(tmp_path, suffix, spatial_dim, length_unit):
    x = samples(spatial_dim, length_unit)
    path = io.write(tmp_path / f"s{suffix}", x, n_particles=N, spatial_dim=spatial_dim, length_unit=length_unit)
    back = io.read(path, spatial_dim=spatial_dim, length_unit=length_unit)
    assert back.positions.dtype == np.float64 and back.positions.shape == x.shape
    assert np.abs(back.positions - x).max() <= tolerance(suffix, x, length_unit)
    assert back.elements == ("Ar",) * N and back.length_unit == length_unit
    assert (back.n_particles, back.spatial_dim) == (N, spatial_dim)
    assert back.energies is None and back.log_weights is None


def test_read_converts_units(tmp_path):
    x = samples(3, "nm")
    io.write(tmp_path / "s.extxyz", x, n_particles=N, spatial_dim=3)
    assert np.allclose(io.read(tmp_path / "s.extxyz", length_unit="Å").positions, 10 * x, atol=1e-7)


def test_extxyz_keeps_energies_and_log_weights(tmp_path):
    x = samples(3)
    rng = np.random.default_rng(1)
    e, logw = rng.normal(-40, 7, size=len(x)), rng.normal(size=len(x))
    io.write(tmp_path / "s.extxyz", torch.from_numpy(x), n_particles=N, spatial_dim=3, energies=torch.from_numpy(e),
             log_weights=logw)
    back = io.read(tmp_path / "s.extxyz")
    np.testing.assert_allclose(back.energies, e, rtol=1e-14)
    np.testing.assert_allclose(back.log_weights, logw, rtol=1e-14)
    frames = ase.io.read(tmp_path / "s.extxyz", index=":")
    assert len(frames) == len(x) and np.allclose(frames[0].get_positions(), 10 * x[0].reshape(N, 3))


def test_dcd_opens_in_mdtraj_with_its_companion_pdb(tmp_path):
    x = samples(3)
    io.write(tmp_path / "run.dcd", x, n_particles=N, spatial_dim=3, element=["C", "N", "O", "Ar", "Ar"],
             names=["C1", "N1", "OX", "AR1", "AR2"])
    traj = md.load(str(tmp_path / "run.dcd"), top=str(tmp_path / "run.pdb"))
    assert traj.n_frames == len(x) and traj.n_atoms == N
    assert np.allclose(traj.xyz.reshape(len(x), -1), x, atol=1e-6)
    assert [a.name for a in traj.topology.atoms] == ["C1", "N1", "OX", "AR1", "AR2"]
    assert io.read(tmp_path / "run.dcd").elements == ("C", "N", "O", "Ar", "Ar")


def test_dcd_topology_path(tmp_path):
    x = samples(3)
    io.write(tmp_path / "a.dcd", x, n_particles=N, spatial_dim=3, topology_path=False)
    assert not (tmp_path / "a.pdb").exists()
    with pytest.raises(FileNotFoundError, match="topology"):
        io.read(tmp_path / "a.dcd")
    io.write(tmp_path / "b.dcd", x, n_particles=N, spatial_dim=3, topology_path=tmp_path / "top.pdb")
    assert np.allclose(io.read(tmp_path / "b.dcd", topology_path=tmp_path / "top.pdb").positions, x, atol=1e-6)


def test_ase_and_mdtraj_read_the_xyz(tmp_path):
    x = samples(3)
    io.write(tmp_path / "s.xyz", x, n_particles=N, spatial_dim=3, element="Ne")
    frames = ase.io.read(tmp_path / "s.xyz", index=":")
    assert len(frames) == len(x) and frames[0].get_chemical_symbols() == ["Ne"] * N
    assert np.allclose(np.stack([f.get_positions() for f in frames]).reshape(len(x), -1), 10 * x, atol=1e-12)
    traj = md.load(str(tmp_path / "s.xyz"), top=io.topology(N, "Ne"))
    assert np.allclose(traj.xyz.reshape(len(x), -1), x, atol=1e-6)


def test_conversions():
    x = samples(2, "Å")
    traj = io.to_mdtraj(x, n_particles=N, spatial_dim=2, length_unit="Å")
    assert traj.xyz.shape == (len(x), N, 3) and np.all(traj.xyz[..., 2] == 0)
    assert np.allclose(traj.xyz[..., :2].reshape(len(x), -1), x / 10, atol=1e-6)
    frames = io.to_ase(x, n_particles=N, spatial_dim=2, length_unit="Å", energies=np.arange(len(x)))
    assert np.allclose(frames[3].get_positions()[:, :2].ravel(), x[3]) and frames[3].info["energy"] == 3.0
    assert not frames[0].pbc.any()


def test_topology():
    top = io.topology(3, ["H", "O", "H"], names=["H1", "O", "H2"], residue="HOH")
    assert [a.name for a in top.atoms] == ["H1", "O", "H2"]
    assert [a.element.symbol for a in top.atoms] == ["H", "O", "H"]
    assert top.n_residues == 3 and {r.name for r in top.residues} == {"HOH"} and top.n_chains == 1


def test_reading_3d_samples_as_2d_raises(tmp_path):
    io.write(tmp_path / "s.pdb", samples(3), n_particles=N, spatial_dim=3)
    with pytest.raises(ValueError, match="not planar"):
        io.read(tmp_path / "s.pdb", spatial_dim=2)


@pytest.mark.parametrize(
    "path, x, kw, match",
    [
        ("s.xtc", samples(3), {}, "unknown trajectory format"),
        ("s.pdb", samples(3)[:, :-1], {}, "shape"),
        ("s.pdb", samples(3)[0], {}, "shape"),
        ("s.pdb", samples(2), {}, "shape"),
        ("s.pdb", np.zeros((2, 4 * N)), {"spatial_dim": 4}, "spatial_dim must be 2 or 3"),
        ("s.pdb", np.where(np.eye(7, 3 * N) > 0, np.nan, samples(3)), {}, "NaN or inf in 7 of 7"),
        ("s.extxyz", samples(3), {"energies": np.zeros(6)}, "energies must have shape"),
        ("s.extxyz", samples(3), {"log_weights": np.zeros((7, 1))}, "log_weights must have shape"),
        ("s.dcd", samples(3), {"energies": np.zeros(7)}, "write .extxyz"),
        ("s.xyz", samples(3), {"topology_path": "t.pdb"}, "topology_path is for .dcd"),
        ("s.pdb", samples(3), {"element": ["Ar"] * 4}, "element has 4 entries for 5 particles"),
        ("s.pdb", samples(3), {"element": "Qq"}, "unknown element symbol 'Qq'"),
        ("s.xyz", samples(3), {"element": "Qq"}, r"unknown element symbol\(s\) \['Qq'\]"),
        ("s.pdb", samples(3), {"names": ["A"] * 6}, "names has 6 entries"),
        ("s.pdb", samples(3), {"length_unit": "bohr"}, "length_unit"),
    ],
)
def test_bad_input_raises(tmp_path, path, x, kw, match):
    kw = {"n_particles": N, "spatial_dim": 3, **kw}
    with pytest.raises(ValueError, match=match):
        io.write(tmp_path / path, x, **kw)
    assert list(tmp_path.iterdir()) == []
