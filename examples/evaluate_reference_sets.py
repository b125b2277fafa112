"""Translate the benchmark systems from OpenMM and ASE, and score the published reference samples.

    python examples/evaluate_reference_sets.py [--reference-dir ../shared/data/reference]

Builds DW-4 and LJ-13 as OpenMM Systems (`iwsm_md.potentials`), translates them to batched
torch energies with `from_openmm` (each force checked against OpenMM's Reference platform),
builds LJ-13 as an ASE Atoms and translates it with `from_ase`, then evaluates the published
equilibrium samples: their mean reduced energy must match the published values
(DW-4 −22.47, LJ-13 −43.00), and ASE and OpenMM must agree.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from iwsm_md.energies import from_ase, from_openmm
from iwsm_md.potentials import (ASE_REDUCED_TEMPERATURE, REDUCED_TEMPERATURE, double_well, lj_cluster,
                                lj_cluster_atoms)

DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--rows", type=int, default=None, help="evaluate only the first ROWS samples")
    args = parser.parse_args()

    systems = {
        "DW-4": (from_openmm(double_well(4), REDUCED_TEMPERATURE, spatial_dim=2), "val_split_DW4.npy", -22.47),
        "LJ-13": (from_openmm(lj_cluster(13), REDUCED_TEMPERATURE), "val_split_LJ13-1000.npy", -43.00),
    }
    lj13_ase = from_ase(lj_cluster_atoms(13), ASE_REDUCED_TEMPERATURE)
    print(f"{'system':8} {'samples':>8} {'mean E/kT':>10} {'published':>10} {'max |ASE - OpenMM|':>20}")
    for name, (energy, filename, published) in systems.items():
        for force, err in energy.report.translated.items():
            print(f"  translated {force}: max relative error vs OpenMM Reference {err:.1e}")
        x = torch.tensor(np.load(args.reference_dir / filename)[: args.rows], dtype=torch.float64)
        e = energy(x)
        ase_gap = (lj13_ase(x) - e).abs().max().item() if name == "LJ-13" else float("nan")
        print(f"{name:8} {len(x):8d} {e.mean().item():10.3f} {published:10.2f} {ase_gap:20.2e}")


if __name__ == "__main__":
    main()
