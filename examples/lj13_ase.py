"""Train a sampler of LJ-13 given as ASE Atoms with a calculator, and write an extxyz trajectory.

    python3 examples/lj13_ase.py [--minutes 10] [--out runs/lj13_ase] [--fast]

`lj_cluster_atoms(13)` is an `ase.Atoms` whose calculator is ASE's `LennardJones` plus a
harmonic restraint to the centroid (eV and Å; kT = 1 eV at `ASE_REDUCED_TEMPERATURE`). Any
ASE calculator works the same way: `from_ase` translates LennardJones and the restraint into
batched torch kernels and runs any other calculator one configuration at a time. Samples come
back in Å and are written as extxyz with each frame's energy (kT), which ASE reads back.
"""
import argparse
from pathlib import Path

import iwsm_md
from iwsm_md import TrainConfig, io, metrics
from iwsm_md.potentials import ASE_REDUCED_TEMPERATURE, lj_cluster_atoms

# cheaper than the published LJ-13 settings (K = 1000, EGNN width 128 with 5 layers)
CPU_PROFILE = dict(n_mc=50, batch_size=128, steps_per_epoch=25, sample_steps=100, samples_per_epoch=256, hidden=64,
                   layers=3, epochs=100_000)
FAST = dict(n_mc=8, batch_size=16, snis_n=2, steps_per_epoch=2, sample_steps=10, samples_per_epoch=16, hidden=16,
            layers=2, epochs=2)  # smoke run; its numbers mean nothing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/lj13_ase"))
    parser.add_argument("--fast", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    n = 50 if args.fast else args.samples

    atoms = lj_cluster_atoms(13)
    config = TrainConfig.published("lj13", max_minutes=args.minutes, **(FAST if args.fast else CPU_PROFILE))
    sampler = iwsm_md.train(atoms, temperature=ASE_REDUCED_TEMPERATURE, config=config)
    x = sampler.sample(n)  # (n, 39) in Å
    e = metrics.energies(sampler.energy, x)
    path = io.write(args.out / "samples.extxyz", x, n_particles=13, spatial_dim=3, length_unit="Å", element="Ar",
                    energies=e)
    back = io.read(path, length_unit="Å")
    print(f"wrote {len(back.positions)} frames to {path}; mean energy {e.mean():.2f} kT "
          "(the published reference: -43.0)")


if __name__ == "__main__":
    main()
