"""Analyse a sampler's trajectory with mdtraj: pair distances, the cluster RDF, and an energy
histogram against a reference.

    python3 examples/analyse_with_mdtraj.py runs/dw4_openmm/samples.dcd runs/dw4_openmm/samples.pdb

Reads the DCD written by `examples/dw4_openmm.py` (or `iwsm-md sample --out x.dcd`) with
mdtraj, computes non-periodic pair distances with `md.compute_distances(periodic=False)` (a
cluster has no unit cell, so mdtraj's `compute_rdf` does not apply), and compares them and the
energies with the project's DW-4 reference set; writes rdf.png beside the trajectory.
"""
import argparse
import itertools
from pathlib import Path

import mdtraj as md
import numpy as np

from iwsm_md import analysis, metrics
from iwsm_md.potentials import builtin_energy

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference" / "dw4.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dcd", type=Path)
    parser.add_argument("pdb", type=Path)
    args = parser.parse_args()

    traj = md.load(str(args.dcd), top=str(args.pdb))  # nm; DW-4 lives in the z = 0 plane
    pairs = np.array(list(itertools.combinations(range(traj.n_atoms), 2)))
    d = md.compute_distances(traj, pairs, periodic=False)  # (frames, pairs) nm
    x = traj.xyz[:, :, :2].reshape(traj.n_frames, -1).astype(np.float64)
    ref = np.load(REFERENCE)["positions"].astype(np.float64)
    energy = builtin_energy("dw4")
    print(f"{traj.n_frames} frames, mean pair distance {d.mean():.3f} nm (reference "
          f"{metrics.pair_distances(ref, 4, 2).mean():.3f})")
    print(f"D-TVD {metrics.distance_tvd(x, ref, 4, 2):.3f}, E-TVD {metrics.energy_tvd(energy, x, ref):.3f}")
    fig = analysis.plot_rdf(x, 4, 2, r_max=8.0, n_bins=80, reference=ref, length_unit="nm")
    fig.savefig(args.dcd.with_name("rdf.png"), dpi=90)
    print(f"wrote {args.dcd.with_name('rdf.png')}")


if __name__ == "__main__":
    main()
