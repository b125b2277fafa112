"""LJ-55: wall time per effectively independent configuration, the trained sampler against the
project's MCMC and OpenMM Langevin dynamics, all on one machine.

Each row is a run on the machine at hand; its numbers land in
<results>/lj55_vs_mcmc/<machine>-<row>.json as soon as it finishes, and `--table` (also run after
every row) rebuilds <results>/lj55_vs_mcmc.md, one table per machine:

- `metropolis`: the protocol of `data/make_reference.py lj55` (batched single-particle Metropolis,
  compact starts, burn-in stages until the energy and R_g^2 traces are stationary), float32, thinned
  by one autocorrelation time τ (the larger of the energy's and R_g^2's), so each stored row is
  about one effective sample. Its wall time counts everything from the starts on.
- `langevin`: OpenMM LangevinMiddle dynamics (dt 0.005 ps, friction 1/ps, the CPU platform with
  one thread per replica), `--replicas` independent replicas in as many processes, each from an
  energy-minimised lattice: `--burn-in` steps, a pilot that measures τ (energy and R_g^2, resolution
  50 steps), then production with a stride of ⌈τ⌉ steps. Wall: the slowest replica, pilot included.
- `sampler`: a trained sampler (`--sampler PATH.pt`, e.g. the `.pt` that benchmarks/particles.py
  keeps beside an LJ-55 run): `--samples` independent draws (n_effective = n) with its
  `sample_steps`; the row gives the sampling wall, and training plus sampling with the training
  wall recorded in the sampler (`history[-1]["seconds"]`).

Quality: each row's configurations (centred) are scored exactly as in benchmarks/particles.py
(2000 vs 2000 rows against the project's reference set `data/reference/lj55.npz`, 5 draws): W1,
W2, E-TVD, D-TVD, beside the floor row (two halves of the reference set, split by chain) and the targets there.
Time per effective sample = wall / n_effective; a row counts as "equal quality" when its E-TVD
and D-TVD meet particles.py's LJ-55 targets.

    python3 benchmarks/lj55_vs_mcmc.py --rows metropolis langevin
    python3 benchmarks/lj55_vs_mcmc.py --rows sampler --sampler benchmarks/results/particles/lj55-iwsm-seed0.pt
    python3 benchmarks/lj55_vs_mcmc.py --table
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

import iwsm_md
from common import cpu_name, fmt, hardware
from iwsm_md import mcmc
from iwsm_md.potentials.openmm_systems import REDUCED_TEMPERATURE, lj_cluster
from particles import METRICS, REFERENCE_DIR, centred, floor_row, references, score, targets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "data"))
import make_reference  # noqa: E402  (the reference sets' MCMC protocol, reused for the Metropolis row)

RESULTS = Path(__file__).parent / "results"
ROWS = ("metropolis", "langevin", "sampler")
N_WANTED = 10_000  # effectively independent configurations each row aims at
PILOT_STRIDE = 50  # Langevin pilot: steps between recorded samples (the resolution of its τ)


def machine_key() -> str:
    """A file-name-safe label of this machine (its GPU, else its CPU), so rows of one machine group."""
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_name()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def quality(x: np.ndarray, refs: dict) -> dict:
    """`{metric: [mean, std]}` of configurations `x` `(n, 165)` against the reference set, centred."""
    return score("lj55", centred("lj55", x), refs["ref"])


# ---------------------------------------------------------------------------------------------
# rows


def metropolis_row(seed: int, max_minutes: float, n: int = N_WANTED) -> dict:
    """The reference protocol with thinning 1 τ and `n` stored rows, float32, its own seed."""
    cfg = dict(make_reference.SYSTEMS["lj55"], thin_factor=1.0, dtype="float32", max_minutes=max_minutes)
    res = make_reference.run("lj55", cfg, n, seed, log=print)
    return dict(x=res["positions"], wall=res["wall"], n_effective=res["n_eff"],
                details=dict(chains=cfg["chains"], thin=res["every"], tau_sweeps=res["tau"],
                             tau_pilot_sweeps=res["tau_pilot"], tau_between_stored=res["tau_stored"],
                             burn_in_sweeps=res["burn_in"], shortfall=res["shortfall"], dtype=cfg["dtype"],
                             acceptance=res["prod"].acceptance, max_minutes=max_minutes))


def _gyration_tau(samples: torch.Tensor, stride: int) -> float:
    """τ of R_g^2 in integrator steps from `(n, 165)` samples recorded every `stride` steps."""
    rg = make_reference.gyration(samples.double(), 55, 3)[:, None]
    return make_reference.quiet_tau(rg) * stride


def _langevin_replica(args: tuple) -> dict:
    """One replica (runs in its own process): burn-in, pilot (τ), production with stride ⌈τ⌉."""
    seed, n_samples, burn_in, pilot_samples = args
    torch.set_num_threads(1)
    start = time.perf_counter()
    run = dict(temperature=REDUCED_TEMPERATURE, platform="CPU", platform_properties={"Threads": "1"})
    system = lj_cluster(55)
    pilot = mcmc.langevin_openmm(system, n_samples=pilot_samples, stride=PILOT_STRIDE, burn_in=burn_in, seed=seed,
                                 **run)
    tau = max(pilot.autocorrelation_time, _gyration_tau(pilot.samples, PILOT_STRIDE))
    stride = max(1, math.ceil(tau))
    prod = mcmc.langevin_openmm(system, n_samples=n_samples, stride=stride, burn_in=0, seed=seed + 1000,
                                positions=pilot.state.reshape(55, 3).numpy(), minimize=False, **run)
    tau_e, tau_rg = prod.autocorrelation_time, _gyration_tau(prod.samples, stride)
    n_eff = min(float(n_samples), n_samples * stride / max(tau_e, tau_rg))
    return dict(x=prod.samples.numpy().astype(np.float32), wall=time.perf_counter() - start, n_effective=n_eff,
                stride=stride, tau_pilot=tau, tau_energy=tau_e, tau_gyration=tau_rg,
                steps=burn_in + pilot_samples * PILOT_STRIDE + n_samples * stride,
                mean_energy=float(prod.energies.mean()))


def langevin_row(seed: int, replicas: int, burn_in: int, pilot_samples: int, n: int = N_WANTED) -> dict:
    """`replicas` independent replicas in parallel processes, `n / replicas` samples each."""
    per = -(-n // replicas)
    jobs = [(seed * 100 + r, per, burn_in, pilot_samples) for r in range(replicas)]
    start = time.perf_counter()
    with ProcessPoolExecutor(replicas, mp_context=get_context("spawn")) as pool:
        parts = list(pool.map(_langevin_replica, jobs))
    wall = time.perf_counter() - start
    for p in parts:
        print(f"  replica: stride {p['stride']} steps (pilot τ {p['tau_pilot']:.0f}), production τ energy "
              f"{p['tau_energy']:.0f} / R_g^2 {p['tau_gyration']:.0f} steps, n_eff {p['n_effective']:.0f}, "
              f"<E> {p['mean_energy']:.2f}, {p['wall']:.0f} s")
    return dict(x=np.concatenate([p["x"] for p in parts])[:n], wall=wall,
                n_effective=sum(p["n_effective"] for p in parts),
                details=dict(replicas=replicas, timestep_ps=0.005, friction_per_ps=1.0, platform="CPU, 1 thread each",
                             burn_in_steps=burn_in, pilot=f"{pilot_samples} x {PILOT_STRIDE} steps",
                             per_replica=[{k: v for k, v in p.items() if k != "x"} for p in parts]))


def sampler_row(path: Path, n: int, steps: int | None, batch: int, seed: int) -> dict:
    """`n` independent draws of the sampler at `path`; its training wall from its history."""
    sampler = iwsm_md.load(path)
    if sampler.energy.n_particles != 55 or sampler.energy.spatial_dim != 3:
        raise SystemExit(f"{path} is not an LJ-55 sampler ({sampler.energy.n_particles} particles in "
                         f"{sampler.energy.spatial_dim}D)")
    start = time.perf_counter()
    x = sampler.sample(n, steps=steps, seed=seed, batch=batch).double().numpy()
    wall = time.perf_counter() - start
    finite = np.isfinite(x).all(1)
    return dict(x=x[finite], wall=wall, n_effective=float(finite.sum()),
                details=dict(path=str(path), steps=steps or sampler.config.sample_steps, batch=batch,
                             non_finite=int((~finite).sum()), train_seconds=sampler.history[-1]["seconds"],
                             mode=sampler.config.mode, config={k: v for k, v in vars(sampler.config).items()
                                                               if isinstance(v, (int, float, str, type(None)))}))


# ---------------------------------------------------------------------------------------------
# records and table


def _rounded(v):
    """`v` with every float rounded to 4 significant digits (for the table's run details)."""
    if isinstance(v, float):
        return float(f"{v:.4g}")
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    return v


def save(name: str, out: dict, refs: dict, results: Path, conditions: str | None) -> dict:
    q = quality(out["x"], refs)
    rec = dict(row=name, machine=machine_key(), hardware=hardware(), gpu=torch.cuda.is_available(), wall_seconds=out["wall"],
               n_effective=out["n_effective"], n_rows=int(len(out["x"])), metrics=q, details=out["details"],
               conditions=conditions, date=time.strftime("%Y-%m-%d"))
    folder = results / "lj55_vs_mcmc"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rec['machine']}-{name}.json").write_text(json.dumps(rec, indent=1, default=float))
    print(f"{name}: wall {out['wall']:.0f} s, n_effective {out['n_effective']:.0f}, "
          + ", ".join(f"{k} {v[0]:.3f}" for k, v in q.items()))
    return rec


def table(results: Path, reference_dir: Path) -> Path:
    refs = references("lj55", reference_dir)
    floor = floor_row("lj55", refs, results / "particles")
    goal = targets("lj55", floor)
    recs = [json.loads(p.read_text()) for p in sorted((results / "lj55_vs_mcmc").glob("*.json"))]
    lines = ["# LJ-55: trained sampler against MCMC and molecular dynamics", "",
             "Generated by `python3 benchmarks/lj55_vs_mcmc.py` (see its docstring for the protocol of each row). "
             "Time per effective sample = wall time / effectively independent configurations (n_eff); "
             "quality as in particles.md (2000 vs 2000 rows against the project's reference set, 5 draws, "
             "mean ± std over the draws). A row is of reference quality (✓) when its E-TVD and D-TVD meet "
             "particles.md's LJ-55 targets. The issue's bar: on a GPU, the sampler's sampling at most 1/10 "
             "of the best MCMC's time per effective sample.", ""]
    machines = sorted({r["machine"] for r in recs})
    if not machines:
        lines += ["No runs yet: every row is owed (metropolis, langevin, sampler; on this CPU and on a GPU)."]
    for m in machines:
        rows = {r["row"]: r for r in recs if r["machine"] == m}
        lines += [f"## {rows[next(iter(rows))]['hardware']}", "",
                  "| row | wall (s) | n_eff | time per effective sample (ms) | time for 10^4 effective (min) | "
                  + " | ".join(METRICS) + " |", "|---" * (5 + len(METRICS)) + "|",
                  f"| floor: {floor['sets']} | – | – | – | – | "
                  + " | ".join(fmt(*floor[k]) for k in METRICS) + " |",
                  "| target | – | – | – | – | " + " | ".join(fmt(goal[k]) for k in METRICS) + " |"]
        per_eff, equal = {}, {}
        for name in ROWS:
            r = rows.get(name)
            if r is None:
                continue
            walls = [(name, r["wall_seconds"])]
            if name == "sampler":
                walls = [("sampler: sampling", r["wall_seconds"]),
                         ("sampler: training + sampling", r["wall_seconds"] + r["details"]["train_seconds"])]
            cells = " | ".join(fmt(*r["metrics"][k]) + (" ✓" if r["metrics"][k][0] <= goal[k] else "") for k in METRICS)
            for label, wall in walls:
                per_eff[label] = wall / r["n_effective"] if r["n_effective"] > 0 else math.inf
                equal[label] = all(r["metrics"][k][0] <= goal[k] for k in ("E-TVD", "D-TVD"))
                lines.append(f"| {label}{'' if equal[label] else ' (not of reference quality)'} | {wall:.0f} | "
                             f"{r['n_effective']:.0f} | {1e3 * per_eff[label]:.2f} | "
                             f"{N_WANTED * per_eff[label] / 60:.1f} | {cells} |")
        lines.append("")
        mc = {k: per_eff[k] for k in ("metropolis", "langevin") if k in per_eff and equal[k]}
        if mc and "sampler" in rows:
            best = min(mc, key=mc.get)
            caveat = "" if equal["sampler: sampling"] else " (the sampler's samples are not of reference quality)"
            lines.append(f"Sampler / best MCMC ({best}) time per effective sample: sampling "
                         f"{per_eff['sampler: sampling'] / mc[best]:.3g} (bar: ≤ 0.1), training + sampling "
                         f"{per_eff['sampler: training + sampling'] / mc[best]:.3g}{caveat}.")
        owed = [n for n in ROWS if n not in rows]
        lines.append(f"Rows owed on this machine: {', '.join(owed) if owed else 'none'}.")
        for name, r in rows.items():
            lines.append(f"- {name}: {json.dumps(_rounded(r['details']))}; conditions: {r['conditions'] or 'quiet'}.")
        lines.append("")
    if not any(r["gpu"] for r in recs):
        lines.append("GPU rows owed: every row on a GPU machine (the issue's bar is measured there).")
    path = results / "lj55_vs_mcmc.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="*", choices=ROWS, default=[])
    ap.add_argument("--seed", type=int, default=1, help="seed of the MCMC / MD runs (the reference set used 0)")
    ap.add_argument("--max-minutes", type=float, default=60.0, help="Metropolis row: wall-clock budget")
    ap.add_argument("--replicas", type=int, default=os.cpu_count(), help="Langevin row: replicas (processes)")
    ap.add_argument("--burn-in", type=int, default=50_000, help="Langevin row: burn-in steps per replica")
    ap.add_argument("--pilot", type=int, default=400, help=f"Langevin row: pilot samples ({PILOT_STRIDE} steps apart)")
    ap.add_argument("--sampler", type=Path, help="sampler row: a trained LJ-55 sampler (.pt)")
    ap.add_argument("--samples", type=int, default=N_WANTED, help="sampler row: draws")
    ap.add_argument("--steps", type=int, help="sampler row: reverse-SDE steps (default: its sample_steps)")
    ap.add_argument("--batch", type=int, default=1000, help="sampler row: draws integrated at once")
    ap.add_argument("--conditions", help="what else ran on the machine, if anything (shown in the table)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--reference-dir", type=Path, default=REFERENCE_DIR)
    ap.add_argument("--table", action="store_true", help="only rebuild the table")
    args = ap.parse_args()
    if "sampler" in args.rows and args.sampler is None:
        ap.error("--rows sampler needs --sampler PATH.pt")
    refs = references("lj55", args.reference_dir)
    if refs is None:
        raise SystemExit("the LJ-55 reference set is missing: make it with `python3 data/make_reference.py lj55`")
    if not args.table:
        for name in args.rows:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                out = (metropolis_row(args.seed, args.max_minutes) if name == "metropolis"
                       else langevin_row(args.seed, args.replicas, args.burn_in, args.pilot) if name == "langevin"
                       else sampler_row(args.sampler, args.samples, args.steps, args.batch, 10_000 + args.seed))
            save(name, out, refs, args.results, args.conditions)
    print(table(args.results, args.reference_dir))


if __name__ == "__main__":
    main()
