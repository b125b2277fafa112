"""Energy + force throughput of LJ-13 and LJ-55: translated torch kernels vs per-configuration OpenMM.

Writes benchmarks/results/energy_throughput.md. Run from the repository root:

    python benchmarks/energy_throughput.py            # batch 16384, float32
    python benchmarks/energy_throughput.py --quick    # smaller batches, for a smoke test

Every path evaluates energies and forces of the same potentials.lj_cluster(n) System:
- translated: `from_openmm(...)` torch kernels, one call on the whole batch (forces by the
  analytic backward), CPU (and CUDA when present);
- OpenMM per configuration: the exact fallback (`OpenMMFallbackTerm`, Reference platform,
  one `setPositions` + `getState` per configuration), in one process and in a pool of
  one process per core;
- ASE per configuration: `potentials.lj_cluster_atoms(n)` through `ASEFallbackTerm`.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import openmm
import torch

from common import cpu_name
from iwsm_md.energies import from_openmm
from iwsm_md.energies.fallback import ASEFallbackTerm, OpenMMFallbackTerm
from iwsm_md.energies.units import BOLTZMANN_EV, MOLAR_GAS_CONSTANT
from iwsm_md.potentials import ASE_REDUCED_TEMPERATURE, REDUCED_TEMPERATURE, lj_cluster, lj_cluster_atoms

TARGETS = {13: 20.0, 55: 4.0}  # required speed-up of the translated path over per-configuration OpenMM
RESULTS = Path(__file__).parent / "results" / "energy_throughput.md"


def configurations(n: int, batch: int, seed: int = 0) -> np.ndarray:
    """`(batch, n, 3)` float64 cluster configurations: a jittered close-packed-ish blob."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * 1.1
    return grid[None] - grid.mean(0) + rng.normal(0, 0.08, (batch, n, 3))


def rate(fn, x, repeats: int) -> float:
    """Best configurations/s of `fn(x)` over `repeats` timed calls after one warm-up call."""
    fn(x[: min(len(x), 64)])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def energy_and_forces(term):
    def run(pos):
        pos = pos.detach().requires_grad_(True)
        term(pos).sum().backward()
        return pos.grad

    return run


def hardware() -> str:
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"OpenMM {openmm.__version__}{gpu}")


def measure(n: int, batch: int, per_config_batch: int, repeats: int) -> list[tuple[str, str, float]]:
    system = lj_cluster(n)
    x64 = torch.tensor(configurations(n, batch))
    rows = []
    energy = from_openmm(system, REDUCED_TEMPERATURE)
    for dtype in (torch.float32, torch.float64):
        rows.append((f"translated torch, CPU, {str(dtype)[6:]}", f"{batch}",
                     rate(energy.energy_and_forces, x64.reshape(batch, -1).to(dtype), repeats)))
    if torch.cuda.is_available():
        xc = x64.reshape(batch, -1).to("cuda", torch.float32)

        def cuda_run(x):
            energy.energy_and_forces(x)
            torch.cuda.synchronize()

        rows.append(("translated torch, CUDA, float32", f"{batch}", rate(cuda_run, xc, repeats)))
    kT = MOLAR_GAS_CONSTANT * REDUCED_TEMPERATURE
    names = [f.getName() for f in system.getForces()]
    xs = x64[:per_config_batch].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for workers in (1, os.cpu_count() or 1):
            term = OpenMMFallbackTerm(system, kT, 3, names, n_workers=workers)
            term.pool_threshold = 0 if workers > 1 else len(xs) + 1
            label = "OpenMM Reference per configuration, " + ("1 process" if workers == 1 else f"pool of {workers}")
            rows.append((label, f"{per_config_batch}", rate(energy_and_forces(term), xs, repeats)))
            term.close()
        atoms = lj_cluster_atoms(n)
        ase_term = ASEFallbackTerm(atoms, BOLTZMANN_EV * ASE_REDUCED_TEMPERATURE, "LennardJones+HarmonicCentroidRestraint")
        xa = xs[: max(64, per_config_batch // 16)]
        rows.append(("ASE LennardJones per configuration, 1 process", f"{len(xa)}",
                     rate(energy_and_forces(ase_term), xa, 1)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--per-config-batch", type=int, default=4096,
                        help="configurations timed on the per-configuration paths (their rate does not depend on it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small batches: a smoke test, not a measurement")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.per_config_batch, args.repeats = 1024, 256, 1
    lines = [
        "# Energy + force throughput: translated torch kernels vs per-configuration OpenMM",
        "",
        f"Generated by `python benchmarks/energy_throughput.py{' --quick' if args.quick else ''}` on "
        f"{datetime.date.today().isoformat()}.",
        f"Hardware: {hardware()}.",
        "",
        "Systems: `potentials.lj_cluster(n)` (CustomNonbondedForce LJ + CustomCentroidBondForce restraint), "
        "energy and forces of every configuration, best of "
        f"{args.repeats} timed calls. Configurations/s, higher is better.",
        "",
    ]
    for n in (13, 55):
        rows = measure(n, args.batch, args.per_config_batch, args.repeats)
        per_config = max(r for label, _, r in rows if label.startswith("OpenMM"))
        translated = next(r for label, _, r in rows if label == "translated torch, CPU, float32")
        speedup = translated / per_config
        verdict = "met" if speedup >= TARGETS[n] else "NOT met"
        lines += [f"## LJ-{n}", "", "| path | batch | conf/s | vs best per-configuration OpenMM |", "|---|---|---|---|"]
        lines += [f"| {label} | {b} | {r:,.0f} | {r / per_config:.2f}× |" for label, b, r in rows]
        lines += ["", f"Translated CPU float32 over the best per-configuration OpenMM path: **{speedup:.1f}×** "
                      f"(target ≥ {TARGETS[n]:.0f}×: {verdict}).", ""]
        print("\n".join(lines[-len(rows) - 6:]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
