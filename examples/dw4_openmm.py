"""Train a sampler of DW-4 built as an OpenMM System; write samples, a DCD, plots and metrics.

    python3 examples/dw4_openmm.py [--minutes 8] [--out runs/dw4_openmm] [--fast]

The README's main job. DW-4 (four particles in 2D, `Σ_{i<j} 0.9(d−4)^4 − 4(d−4)^2` kJ/mol with
d in nm) is an OpenMM System from `iwsm_md.potentials`; at `REDUCED_TEMPERATURE` kT = 1 kJ/mol.
The sampler trains with a CPU profile (cheaper than the published settings) for `--minutes`,
then draws `--samples` configurations and writes, under `--out`:

    sampler.pt            the trained sampler (`iwsm_md.load`)
    samples.npy           (n, 8) positions in nm
    samples.dcd (+ .pdb)  the same as a trajectory that mdtraj and VMD read (z = 0)
    training.png, energy.png, pair_distances.png
    metrics.json          W1, W2, E-TVD, D-TVD against the project's reference set
                          (data/reference/dw4.npz, made by MCMC), with the floor beside them

and prints the metrics table.
"""
import argparse
import json
from pathlib import Path

import numpy as np

import iwsm_md
from iwsm_md import TrainConfig, analysis, io, metrics
from iwsm_md.potentials import REDUCED_TEMPERATURE, double_well

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference" / "dw4.npz"
# cheaper than the published DW-4 settings (K = 1000, 1000 reverse-SDE steps per refill)
# and a narrower EGNN (hidden 64 instead of 128): a CPU runs its pair tensors 4x faster
CPU_PROFILE = dict(n_mc=100, steps_per_epoch=50, sample_steps=100, samples_per_epoch=500, hidden=64,
                   epochs=100_000)
# --fast: a smoke run of the whole pipeline in seconds (the tests run it); its numbers mean nothing
FAST = dict(n_mc=16, batch_size=64, snis_n=2, steps_per_epoch=2, sample_steps=10, samples_per_epoch=64, hidden=16,
            epochs=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall-time budget")
    parser.add_argument("--samples", type=int, default=2000, help="configurations to draw and score")
    parser.add_argument("--out", type=Path, default=Path("runs/dw4_openmm"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="smoke run: tiny settings, 200 samples")
    args = parser.parse_args()
    if args.fast:
        args.samples = 200
    args.out.mkdir(parents=True, exist_ok=True)

    config = TrainConfig.published("dw4", seed=args.seed, max_minutes=args.minutes,
                                   **(FAST if args.fast else CPU_PROFILE))
    sampler = iwsm_md.train(double_well(), temperature=REDUCED_TEMPERATURE, spatial_dim=2, config=config,
                            log=lambda h: print(f"epoch {h['epoch']:4d}  loss {h['loss']:9.4g}  "
                                                f"weight ESS {h['weight_ess']:.2f}  {h['seconds']:6.0f} s"))
    sampler.save(args.out / "sampler.pt")
    energy = sampler.energy
    x = sampler.sample(args.samples).double().numpy()
    np.save(args.out / "samples.npy", x)
    io.write(args.out / "samples.dcd", x, n_particles=4, spatial_dim=2, length_unit=energy.length_unit)

    ref = np.load(REFERENCE)["positions"].astype(np.float64)
    n = min(args.samples, len(ref) // 2)
    x, ref_a, ref_b = metrics.centre(x[:n], 4, 2), metrics.centre(ref[:n], 4, 2), metrics.centre(ref[n:2 * n], 4, 2)
    rows = {"sampler": metrics.evaluate(x, ref_a, energy=energy),
            "floor (reference vs reference)": metrics.evaluate(ref_b, ref_a, energy=energy)}
    (args.out / "metrics.json").write_text(json.dumps(rows, indent=1))
    analysis.plot_history(sampler.history, config.mode).savefig(args.out / "training.png", dpi=90)
    analysis.plot_energy(metrics.energies(energy, x), metrics.energies(energy, ref_a)).savefig(
        args.out / "energy.png", dpi=90)
    analysis.plot_pair_distances(x, ref_a, 4, 2, length_unit="nm").savefig(args.out / "pair_distances.png", dpi=90)

    keys = ("W1", "W2", "E-TVD", "D-TVD")
    print(f"\n{'DW-4, ' + str(n) + ' vs ' + str(n):32s}" + "".join(f"{k:>9s}" for k in keys))
    for name, row in rows.items():
        print(f"{name:32s}" + "".join(f"{row[k]:9.3f}" for k in keys))
    print(f"\nwrote {args.out}/: sampler.pt samples.npy samples.dcd samples.pdb metrics.json training.png "
          "energy.png pair_distances.png")


if __name__ == "__main__":
    main()
