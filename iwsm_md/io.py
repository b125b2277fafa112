"""Samples as MD trajectories: write and read DCD, PDB, XYZ and extended XYZ, convert to mdtraj/ASE.

Samples are `(n_frames, n_particles * spatial_dim)` arrays (numpy or torch), flattened
particle-major, `spatial_dim` 2 or 3, in the system's length unit (`Energy.length_unit`):
"nm" (OpenMM-born energies), "Å" (ASE-born ones), or None for reduced units, which are
written as if 1 length unit were 1 nm. Units are converted once, here: mdtraj works in nm
(DCD and PDB files hold Å, mdtraj converts), XYZ and extended XYZ files are in Å by
convention. 2-D samples are written with z = 0 and read back without it.

Formats, chosen by the file's suffix, and what they keep (measured round trips):

| suffix | written by | precision | keeps |
|---|---|---|---|
| `.dcd` | mdtraj | float32 Å, ~1e-7 relative | positions; topology in a companion `.pdb` |
| `.pdb` | mdtraj | 3 decimals in Å (5e-5 nm) | positions, elements, atom names |
| `.xyz` | ASE (plain XYZ) | 15 decimals in Å | positions, elements |
| `.extxyz` | ASE (extended XYZ) | 8 decimals in Å | positions, elements, energies, log-weights |

XTC is not offered: it rounds to 1e-3 nm. Energies and log-weights are stored as given (the
sampler's reduced E/kT and log importance weights), per frame in `atoms.info["energy"]` and
`atoms.info["log_weight"]`; only extended XYZ can hold them.

The topology has one atom per particle, one residue per atom (as for monatomic ions or noble
gases in a PDB file), all in one chain.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import ase
import ase.io
from ase.data import atomic_numbers
import mdtraj as md
import numpy as np
import torch

__all__ = ["Samples", "topology", "write", "read", "to_mdtraj", "to_ase", "FORMATS"]

FORMATS = (".dcd", ".pdb", ".xyz", ".extxyz")
_NM_PER_UNIT = {"nm": 1.0, "Å": 0.1, None: 1.0}  # None: reduced units, 1 length unit = 1 nm
_ANGSTROM_PER_NM = 10.0
_PLANAR_TOLERANCE_NM = 1e-4  # |z| allowed when reading 2-D samples back (1e-3 Å, PDB's field)


@dataclass(frozen=True)
class Samples:
    """Configurations read from a trajectory file.

    Attributes:
        positions: `(n_frames, n_particles * spatial_dim)` float64, flattened particle-major,
            in `length_unit`.
        elements: `n_particles` element symbols.
        length_unit: unit of `positions` ("nm", "Å", or None for reduced units read as nm).
        energies: `(n_frames,)` float64 as stored (reduced E/kT), or None.
        log_weights: `(n_frames,)` float64 log importance weights, or None.
    """

    positions: np.ndarray
    elements: tuple[str, ...]
    length_unit: str | None
    energies: np.ndarray | None = None
    log_weights: np.ndarray | None = None

    @property
    def n_particles(self) -> int:
        return len(self.elements)

    @property
    def spatial_dim(self) -> int:
        return self.positions.shape[1] // self.n_particles


# ---------------------------------------------------------------------------------------------
# validation and units


def _nm_per_unit(length_unit: str | None) -> float:
    if length_unit not in _NM_PER_UNIT:
        raise ValueError(f"length_unit must be 'nm', 'Å' or None (reduced, written as nm), got {length_unit!r}")
    return _NM_PER_UNIT[length_unit]


def _per_particle(value: str | Sequence[str], n_particles: int, what: str) -> list[str]:
    """One string per particle from a single string or a sequence of `n_particles` strings."""
    if isinstance(value, str):
        return [value] * n_particles
    value = [str(v) for v in value]
    if len(value) != n_particles:
        raise ValueError(f"{what} has {len(value)} entries for {n_particles} particles")
    return value


def _positions_nm(samples: Any, n_particles: int, spatial_dim: int, length_unit: str | None) -> np.ndarray:
    """Validated samples `(n, n_particles*spatial_dim)` as `(n, n_particles, 3)` float64 in nm, 2-D
    padded with z = 0. Raises ValueError for a wrong shape, spatial_dim or non-finite coordinate."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    x = np.asarray(samples, dtype=np.float64)
    if spatial_dim not in (2, 3):
        raise ValueError(f"spatial_dim must be 2 or 3, got {spatial_dim}")
    if n_particles < 1:
        raise ValueError(f"n_particles must be positive, got {n_particles}")
    dim = n_particles * spatial_dim
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] == 0:
        raise ValueError(
            f"samples must have shape (n_frames >= 1, n_particles*spatial_dim = {n_particles}*{spatial_dim}"
            f" = {dim}), got {x.shape}"
        )
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"samples hold NaN or inf in {int(bad.sum())} of {x.shape[0]} frames "
                         f"(first: {np.flatnonzero(bad)[:5].tolist()})")
    pos = x.reshape(x.shape[0], n_particles, spatial_dim) * _nm_per_unit(length_unit)
    if spatial_dim == 2:
        pos = np.concatenate([pos, np.zeros_like(pos[..., :1])], axis=-1)
    return pos


def _per_frame(values: Any, n_frames: int, what: str) -> np.ndarray | None:
    """Per-frame `values` as a `(n_frames,)` float64 array (None stays None); ValueError otherwise."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (n_frames,):
        raise ValueError(f"{what} must have shape ({n_frames},), one per frame, got {v.shape}")
    return v


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unknown trajectory format {path.suffix!r} of {path}: use one of {', '.join(FORMATS)}")
    return suffix


# ---------------------------------------------------------------------------------------------
# conversion


def topology(n_particles: int, element: str | Sequence[str] = "Ar", names: Sequence[str] | None = None,
             residue: str = "UNK") -> md.Topology:
    """An mdtraj Topology of `n_particles` atoms: one chain, one residue (named `residue`) per atom.

    Args:
        element: one element symbol for every particle, or `n_particles` symbols.
        names: `n_particles` atom names (PDB allows 4 characters); default: the element symbols.
    """
    elements = _per_particle(element, n_particles, "element")
    names = elements if names is None else _per_particle(names, n_particles, "names")
    top = md.Topology()
    chain = top.add_chain()
    for symbol, name in zip(elements, names):
        try:
            el = md.element.get_by_symbol(symbol)
        except KeyError:
            raise ValueError(f"unknown element symbol {symbol!r}") from None
        top.add_atom(name, el, top.add_residue(residue, chain))
    return top


def to_mdtraj(samples: Any, *, n_particles: int, spatial_dim: int, length_unit: str | None = "nm",
              element: str | Sequence[str] = "Ar", names: Sequence[str] | None = None) -> md.Trajectory:
    """Samples `(n, n_particles*spatial_dim)` in `length_unit` as an mdtraj Trajectory (nm, 3-D,
    z = 0 for 2-D samples, no unit cell), topology from `topology(n_particles, element, names)`."""
    pos = _positions_nm(samples, n_particles, spatial_dim, length_unit)
    return md.Trajectory(pos, topology(n_particles, element, names))


def to_ase(samples: Any, *, n_particles: int, spatial_dim: int, length_unit: str | None = "nm",
           element: str | Sequence[str] = "Ar", energies: Any = None, log_weights: Any = None) -> list[ase.Atoms]:
    """Samples `(n, n_particles*spatial_dim)` in `length_unit` as `n` ASE Atoms (Å, 3-D, z = 0 for
    2-D samples, no cell, not periodic). `energies` and `log_weights` `(n,)`, where given, go into
    each frame's `atoms.info["energy"]` and `atoms.info["log_weight"]` unchanged (E/kT, not eV)."""
    pos = _positions_nm(samples, n_particles, spatial_dim, length_unit) * _ANGSTROM_PER_NM
    symbols = _per_particle(element, n_particles, "element")
    unknown = sorted(set(symbols) - set(atomic_numbers))
    if unknown:
        raise ValueError(f"unknown element symbol(s) {unknown}")
    energies = _per_frame(energies, pos.shape[0], "energies")
    log_weights = _per_frame(log_weights, pos.shape[0], "log_weights")
    frames = []
    for i, frame in enumerate(pos):
        atoms = ase.Atoms(symbols=symbols, positions=frame)
        if energies is not None:
            atoms.info["energy"] = float(energies[i])
        if log_weights is not None:
            atoms.info["log_weight"] = float(log_weights[i])
        frames.append(atoms)
    return frames


# ---------------------------------------------------------------------------------------------
# files


def write(path: str | Path, samples: Any, *, n_particles: int, spatial_dim: int, length_unit: str | None = "nm",
          element: str | Sequence[str] = "Ar", names: Sequence[str] | None = None, energies: Any = None,
          log_weights: Any = None, topology_path: str | Path | bool | None = None) -> Path:
    """Write samples `(n, n_particles*spatial_dim)` in `length_unit` to a trajectory file.

    The format comes from the suffix of `path` (see the module docstring): `.dcd`, `.pdb`,
    `.xyz` or `.extxyz`. `element` and `names` set the topology (`names` reach PDB/DCD only).
    `energies` and `log_weights` `(n,)` can only be written to `.extxyz`.

    `.dcd` only: its topology goes to a companion PDB file (the first frame), by default the
    same path with suffix `.pdb` (`x.dcd` -> `x.pdb`) for `topology_path` None or True, or
    `topology_path` itself if it is a path; `topology_path=False` writes none. Open the pair with `mdtraj.load(dcd, top=pdb)` or `read`.

    Returns the path written. Raises ValueError for an unknown suffix, samples of the wrong
    shape or with NaN/inf, a spatial_dim other than 2 or 3, per-frame values of the wrong
    length, or per-frame values or a topology path the format cannot hold.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix != ".extxyz" and (energies is not None or log_weights is not None):
        raise ValueError(f"{suffix} files cannot hold energies or log-weights: write .extxyz to keep them")
    if suffix != ".dcd" and topology_path not in (None, False):
        raise ValueError(f"topology_path is for .dcd files only (they store no topology), not {suffix}")
    layout = dict(n_particles=n_particles, spatial_dim=spatial_dim, length_unit=length_unit, element=element)
    if suffix in (".xyz", ".extxyz"):
        frames = to_ase(samples, **layout, energies=energies, log_weights=log_weights)
        ase.io.write(path, frames, format=suffix[1:])
        return path
    traj = to_mdtraj(samples, **layout, names=names)
    if suffix == ".pdb":
        traj.save_pdb(str(path))
        return path
    traj.save_dcd(str(path))
    if topology_path is not False:
        traj[0].save_pdb(str(path.with_suffix(".pdb") if topology_path in (None, True) else topology_path))
    return path


def read(path: str | Path, *, spatial_dim: int = 3, length_unit: str | None = "nm",
         topology_path: str | Path | None = None) -> Samples:
    """Read a trajectory file written by `write` (or any file of the same format) as `Samples`.

    Positions come back as `(n, n_particles*spatial_dim)` float64 in `length_unit`. With
    `spatial_dim=2` the z column is dropped, and ValueError is raised if any |z| exceeds 1e-3 Å
    (the samples were not planar). A `.dcd` file needs its topology: `topology_path`, by default
    the companion `.pdb` that `write` puts beside it. Energies and log-weights are read from
    extended XYZ frames that hold them in every frame (None otherwise).
    """
    path = Path(path)
    suffix = _suffix(path)
    if spatial_dim not in (2, 3):
        raise ValueError(f"spatial_dim must be 2 or 3, got {spatial_dim}")
    if suffix in (".xyz", ".extxyz"):
        frames = ase.io.read(path, index=":", format=suffix[1:])
        pos_nm = np.stack([a.get_positions() for a in frames]) / _ANGSTROM_PER_NM
        elements = tuple(frames[0].get_chemical_symbols())
        energies = _stored(frames, "energy")
        log_weights = _stored(frames, "log_weight")
    else:
        traj = _load_mdtraj(path, suffix, topology_path)
        pos_nm = traj.xyz.astype(np.float64)
        elements = tuple(atom.element.symbol for atom in traj.topology.atoms)
        energies = log_weights = None
    if spatial_dim == 2:
        z = float(np.abs(pos_nm[..., 2]).max())
        if z > _PLANAR_TOLERANCE_NM:
            raise ValueError(f"{path} is not planar (max |z| = {z * _ANGSTROM_PER_NM:.3g} Å): cannot read it as 2-D")
        pos_nm = pos_nm[..., :2]
    positions = pos_nm.reshape(pos_nm.shape[0], -1) / _nm_per_unit(length_unit)
    return Samples(positions, elements, length_unit, energies, log_weights)


def _load_mdtraj(path: Path, suffix: str, topology_path: str | Path | None) -> md.Trajectory:
    if suffix == ".pdb":
        return md.load_pdb(str(path))
    top = Path(topology_path) if topology_path is not None else path.with_suffix(".pdb")
    if not top.exists():
        raise FileNotFoundError(f"{path} needs a topology file: {top} does not exist (pass topology_path)")
    return md.load_dcd(str(path), top=str(top))


def _stored(frames: list[ase.Atoms], key: str) -> np.ndarray | None:
    """`(n,)` per-frame values stored under `key` (in `info`, or for "energy" in the single-point
    calculator ASE's extxyz reader puts it in), None if no frame has one; ValueError if only some do."""
    values = [_frame_value(a, key) for a in frames]
    present = [v is not None for v in values]
    if not any(present):
        return None
    if not all(present):
        raise ValueError(f"only {sum(present)} of {len(frames)} frames store {key!r}")
    return np.asarray(values, dtype=np.float64)


def _frame_value(atoms: ase.Atoms, key: str) -> float | None:
    if key in atoms.info:
        return float(atoms.info[key])
    if atoms.calc is not None and key in atoms.calc.results:
        return float(atoms.calc.results[key])
    return None
