"""DW-4, LJ-13 and LJ-55 benchmark (paper Table 2): IWSM and iDEM, several seeds, DESIGN.md's protocol.

Each run trains one (system, mode, seed), draws 2000 samples (`--samples`) and scores them
against the system's reference set after centring both (`metrics.centre`): W1, W2 (exact OT),
E-TVD and D-TVD with `metrics.repeated`, 2000 vs 2000 rows, mean ± std over 5 random draws.
References: the published DW-4 and LJ-13 test sets (`--reference-dir`), and for LJ-55 the
project's own `data/reference/lj55.npz` (made by `data/make_reference.py lj55`; while it is
missing, LJ-55 runs are refused and its rows say "reference set owed"). A run's numbers land in
<results>/particles/*.json as soon as it finishes, so the table fills in over several sessions.
`--table` (also run after every run) rebuilds <results>/particles.md from the runs present: each
system headed by its floor row (exact samples scored against the reference the same way) and
rows beside it (`references`), the paper's numbers and the targets, then mean ± std over seeds per
mode, the settings, wall times and hardware, the runs still owed, and a PNG of the energy and pair-distance histograms.

    python3 benchmarks/particles.py --systems dw4 --modes iwsm idem --seeds 0 1 2
    python3 benchmarks/particles.py --table

Other settings are runs with a tag, listed in their own table under each system:

    python3 benchmarks/particles.py --systems lj13 --modes iwsm --seeds 0 --minutes 8 --tag k100 --set n_mc=100

A finished run's saved sampler (the `.pt` beside its record, kept on the machine that trained it)
can be scored again with another number of reverse-SDE steps, without retraining; the record is
tagged `<tag>-eval<N>` (`profile-eval<N>` for an untagged run):

    python3 benchmarks/particles.py --systems lj13 --modes iwsm --seeds 0 --tag lift --rescore --eval-steps 400

`--results DIR` writes somewhere else than benchmarks/results (smoke runs).
"""
from __future__ import annotations

import datetime
import json
import time
import warnings
from pathlib import Path

import numpy as np

import iwsm_md
from common import (fixed_row, fmt, hardware, load_records, make_record, mode_rows, notes, parser, save_record,
                    settings_table, table_header, unmet_and_owed, with_set)
from iwsm_md import TrainConfig, metrics
from iwsm_md.potentials import builtin_energy

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
REFERENCE_DIR = REPO.parent / "shared" / "data" / "reference"  # the published DW-4 / LJ-13 sets
SYSTEMS = ("dw4", "lj13", "lj55")
LABELS = {"dw4": "DW-4", "lj13": "LJ-13", "lj55": "LJ-55"}
MODES = ("iwsm", "idem")
SEEDS = (0, 1, 2)
N_EVAL = 2000  # rows per side of each metric draw (and default number of generated samples)
DRAWS = 5
METRICS = ("W1", "W2", "E-TVD", "D-TVD")
# The paper's IWSM numbers: a cell's target is this, or the floor + 2σ where that is higher.
PAPER = {"dw4": {"W1": 1.31, "W2": 1.57, "E-TVD": 0.05, "D-TVD": 0.04},
         "lj13": {"W1": 3.86, "W2": 3.87, "E-TVD": 0.15, "D-TVD": 0.08},
         "lj55": {"W1": 15.96, "W2": 15.96, "E-TVD": 0.98, "D-TVD": 0.08}}
LJ55_ETVD = 0.30  # the issue asks for LJ-55 E-TVD <= 0.30: that cell's target is min(0.30, the above)
# Published sets: (floor's "generated" side, reference the runs are scored against).
PUBLISHED = {"dw4": ("val_split_DW4.npy", "test_split_DW4.npy"),
             "lj13": ("val_split_LJ13-1000.npy", "test_split_LJ13-1000.npy")}
# The project's exact sets (data/make_reference.py, key "positions"): LJ-55's reference; DW-4's and
# LJ-13's floor against the published test set.
PROJECT = {s: REPO / "data" / "reference" / f"{s}.npz" for s in SYSTEMS}
# CPU profiles: much cheaper than the published settings (K = 1000 / 100, 1000 reverse-SDE steps per
# buffer refill, EGNN 128 wide with 3 or 5 layers, batch 512 / 128), trained within a wall-time budget.
CPU_PROFILES = {
    "dw4": dict(n_mc=100, steps_per_epoch=50, sample_steps=100, samples_per_epoch=500, hidden=64, epochs=100_000,
                ema_decay=0.999, blend_length=0.25),
    "lj13": dict(n_mc=50, batch_size=128, steps_per_epoch=25, sample_steps=100, samples_per_epoch=256, hidden=64,
                 layers=3, epochs=100_000, ema_decay=0.999),
    "lj55": dict(n_mc=20, batch_size=32, steps_per_epoch=10, sample_steps=50, samples_per_epoch=64, hidden=32,
                 layers=3, epochs=100_000),
}
KEYS = ("n_mc", "batch_size", "snis_n", "steps_per_epoch", "sample_steps", "samples_per_epoch", "lr",
        "loss_weight", "loss_floor", "sigma_min", "sigma_max", "target_clip", "ema_decay", "blend_length", "net", "hidden",
        "layers", "max_minutes")


def centred(system: str, x) -> np.ndarray:
    """Configurations `x` `(n, dim)` of `system` with each one's centre of mass at the origin, float64."""
    energy = builtin_energy(system)
    return metrics.centre(x, energy.n_particles, energy.spatial_dim)


def _project_set(system: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The project's exact reference set of `system`: centred positions `(n, dim)` float64 and each
    row's chain `(n,)` (None while the set is missing)."""
    path = PROJECT[system]
    if not path.exists():
        return None
    data = np.load(path)
    return centred(system, data["positions"]), data["chain"]


def chain_halves(x: np.ndarray, chain: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `x` `(n, dim)` split in two by chain (`chain` `(n,)`: a random half of the chains on
    each side), so that no chain's correlated neighbouring rows fall on both sides."""
    ids = np.unique(chain)
    if len(ids) < 2:
        raise ValueError(f"a split by chain needs at least 2 chains, got {len(ids)}")
    first = np.isin(chain, np.random.default_rng(seed).permutation(ids)[: len(ids) // 2])
    return x[first], x[~first]


def references(system: str, reference_dir: Path) -> dict | None:
    """The sets of `system`: "ref" (centred `(n, dim)` float64, what runs are scored against), "floor"
    (the floor's two sets, `(label, a, b)`: what exact samples score against "ref"), "beside" (rows
    shown beside the floor, same form), "description"; None while the project's set is missing.

    DW-4 and LJ-13 runs are scored against the published test set; their floor is the project's
    exact set against it. The published val set scores lower against test (a "beside" row) without
    being closer to the Boltzmann distribution: the two published sets share rows, and DW-4's share an
    off-equilibrium slow coordinate and a non-uniform orientation (see `orientation_bias`), which no
    rotation-invariant sampler reproduces. LJ-55 has only the project's set: two halves of it, split
    by chain (`chain_halves`: random halves of rows would share each chain's correlated neighbouring
    rows and score lower than two independent sets do)."""
    own = _project_set(system)
    if own is None:
        return None
    own, chain = own
    a, b = chain_halves(own, chain)
    own_name = f"the project's {PROJECT[system].relative_to(REPO)}"
    halves = ("two halves of the project's exact set, split by chain", a, b)
    if system in PUBLISHED:
        val, test = PUBLISHED[system]
        ref, v = (centred(system, np.load(reference_dir / f)) for f in (test, val))
        tag = test.split("_")[0]
        return {"ref": ref, "description": f"published {test} ({len(ref)} rows)",
                "floor": (f"exact samples ({own_name}) vs published {tag}", own, ref),
                "beside": [(f"published {val.split('_')[0]} vs {tag}", v, ref), halves]}
    return {"ref": own, "description": f"{own_name} ({len(own)} rows)", "floor": halves, "beside": []}


def orientation_bias(x: np.ndarray, system: str) -> float:
    """Largest |mean coordinate| of any particle over the set `x` `(n, dim)` (centred): 0 up to noise
    (~0.03 at 10k rows) for a rotation-invariant distribution."""
    energy = builtin_energy(system)
    return float(np.abs(x.reshape(len(x), energy.n_particles, energy.spatial_dim).mean(0)).max())


def score(system: str, x: np.ndarray, ref: np.ndarray) -> dict:
    """`{metric: [mean, std]}` of centred samples `x` against `ref`: `DRAWS` draws of n vs n rows."""
    n = min(N_EVAL, len(x), len(ref))
    row = metrics.repeated(x, ref, n, draws=DRAWS, seed=0, energy=builtin_energy(system))
    return {k: list(v) for k, v in row.items()}


def pair_row(system: str, pair: tuple, path: Path) -> dict:
    """Two sets `(label, a, b)` scored like a run (a playing the generated set), cached at `path` (JSON;
    recomputed when its label differs)."""
    label, a, b = pair
    if path.exists():
        row = json.loads(path.read_text())
        if row.get("sets") == label:
            return row
    n = min(N_EVAL, len(a), len(b))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = metrics.floor(a, b, n=n, draws=DRAWS, seed=0, energy=builtin_energy(system))
    row = {k: list(v) for k, v in row.items()}
    row.update(draws=DRAWS, n=n, sets=label, warnings=[str(w.message) for w in caught])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    return row


def floor_row(system: str, refs: dict, runs: Path) -> dict:
    """The floor (what exact samples score against the reference), cached as <runs>/<system>-floor.json."""
    return pair_row(system, refs["floor"], runs / f"{system}-floor.json")


def targets(system: str, floor: dict) -> dict:
    goal = {m: max(PAPER[system][m], floor[m][0] + 2 * floor[m][1]) for m in METRICS}
    if system == "lj55":
        goal["E-TVD"] = min(LJ55_ETVD, goal["E-TVD"])
    return goal


def run(system: str, mode: str, seed: int, minutes: float, overrides: dict, results: Path, reference_dir: Path,
        n_samples: int = N_EVAL, tag: str | None = None, conditions: str | None = None,
        eval_steps: int | None = None) -> dict:
    """Train one run and score its samples, drawn with `eval_steps` reverse-SDE steps (None: the
    config's `sample_steps`, those of its buffer refills)."""
    refs = references_or_exit(system, reference_dir)
    config = TrainConfig.published(system, mode=mode, seed=seed, max_minutes=minutes)
    config = TrainConfig.with_overrides(config, overrides)  # TypeError naming the valid keys for a wrong one
    t0 = time.perf_counter()
    sampler = iwsm_md.train(system, config=config)
    train_s = time.perf_counter() - t0
    steps = eval_steps or config.sample_steps
    x, row, sample_s = evaluate(system, sampler, seed, min(n_samples, len(refs["ref"])), steps, refs)
    record = make_record("system", system, mode, seed, row, sampler, config, train_s, sample_s, steps,
                         tag, overrides, conditions, n_samples=len(x), draws=DRAWS, reference=refs["description"])
    runs = results / "particles"
    save_record(record, runs, runs / "settings", f"{system}-{mode}-seed{seed}", x[:N_EVAL].astype(np.float32), sampler)
    return record


def rescore(system: str, mode: str, seed: int, tag: str | None, eval_steps: int, results: Path,
            reference_dir: Path, n_samples: int = N_EVAL, conditions: str | None = None) -> dict:
    """Score the saved sampler of a finished run (untagged, or of `tag`) again, its samples drawn
    with `eval_steps` reverse-SDE steps, without retraining: a record tagged `<tag>-eval<steps>`
    (`profile-eval<steps>` for an untagged run) that keeps the run's training fields. The sampler
    file (`.pt`, not committed) must be on this machine."""
    refs = references_or_exit(system, reference_dir)
    runs, stem = results / "particles", f"{system}-{mode}-seed{seed}"
    source = runs / "settings" / f"{stem}-{tag}.json" if tag else runs / f"{stem}.json"
    model = source.with_suffix(".pt")
    if not model.exists():
        raise SystemExit(f"{model} does not exist: a run can be rescored only where it was trained")
    sampler = iwsm_md.load(model)
    x, row, sample_s = evaluate(system, sampler, seed, min(n_samples, len(refs["ref"])), eval_steps, refs)
    record = {**json.loads(source.read_text()), "metrics": row, "sample_seconds": sample_s, "eval_steps": eval_steps,
              "n_samples": len(x), "tag": f"{tag or 'profile'}-eval{eval_steps}", "conditions": conditions,
              "rescored": {"from": source.name, "hardware": hardware(), "date": datetime.date.today().isoformat()}}
    save_record(record, runs, runs / "settings", stem)
    return record


def references_or_exit(system: str, reference_dir: Path) -> dict:
    refs = references(system, reference_dir)
    if refs is None:
        raise SystemExit(f"{LABELS[system]}: reference set owed ({PROJECT[system]} does not exist; make it with "
                         f"`python3 data/make_reference.py {system}`): no run can be scored without it")
    return refs


def evaluate(system: str, sampler, seed: int, n: int, steps: int, refs: dict) -> tuple[np.ndarray, dict, float]:
    """`n` samples of `sampler` (reverse SDE, `steps` steps, seed `10_000 + seed`) `(n, dim)` float64,
    their scores against `refs["ref"]` and the seconds sampling took."""
    t0 = time.perf_counter()
    x = sampler.sample(n, steps=steps, seed=10_000 + seed).double().numpy()
    sample_s = time.perf_counter() - t0
    return x, score(system, centred(system, x), refs["ref"]), sample_s


def plot(system: str, records: list[dict], ref: np.ndarray, results: Path) -> str | None:
    """Energy and pair-distance histograms of the first seed of each mode over a reference draw of the
    same size (so the titles' TVDs are one draw of the table's protocol); returns the PNG's path
    relative to `results`, or None without saved samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iwsm_md.analysis import plot_energy, plot_pair_distances

    runs = results / "particles"
    energy = builtin_energy(system)
    shown = [r for r in records if (runs / f"{system}-{r['mode']}-seed{r['seed']}-samples.npy").exists()]
    if not shown:
        return None
    modes = [m for m in MODES if any(r["mode"] == m for r in shown)]
    fig, axes = plt.subplots(len(modes), 2, figsize=(12, 4 * len(modes)), squeeze=False)
    for (ax_e, ax_d), mode in zip(axes, modes):
        r = min((r for r in shown if r["mode"] == mode), key=lambda r: r["seed"])
        x = np.load(runs / f"{system}-{mode}-seed{r['seed']}-samples.npy")
        x = centred(system, x)
        y = ref[np.random.default_rng(0).choice(len(ref), min(len(x), len(ref)), replace=False)]
        label, ref_label = f"{mode} seed {r['seed']} ({len(x)} samples)", f"reference ({len(y)} rows)"
        plot_energy(metrics.energies(energy, x), metrics.energies(energy, y), ax=ax_e, label=label,
                    reference_label=ref_label)
        plot_pair_distances(x, y, energy.n_particles, energy.spatial_dim, ax=ax_d, label=label,
                            reference_label=ref_label)
        for ax in (ax_e, ax_d):
            ax.set_title(f"{LABELS[system]} {mode} seed {r['seed']}: {ax.get_title()}")
    name = f"particles/{system}-histograms.png"
    fig.savefig(results / name, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return name


def nonfinite(recs: list[dict]) -> list[str]:
    """A line naming the runs that drew non-finite samples, which W1/W2 leave out (the TVDs count them)."""
    bad = [f"{r['mode']} seed {r['seed']}" + (f" ({r['tag']})" if r.get("tag") else "")
           + f": {r['metrics']['n_nonfinite'][0]:g} of {r['n_samples']}"
           for r in recs if r["metrics"].get("n_nonfinite", [0])[0] > 0]
    if not bad:
        return []
    return ["", "Non-finite samples (left out of W1/W2, whose ✓ is then flattering; counted in the TVDs' overflow "
                "bins), mean per draw: " + ", ".join(bad) + "."]


def table(results: Path, reference_dir: Path) -> Path:
    runs = results / "particles"
    lines = ["# Particle benchmarks (paper Table 2)", "",
             "Generated by `python3 benchmarks/particles.py` (see its docstring). Protocol: DESIGN.md — 2000 generated vs "
             f"2000 reference configurations, mean over {DRAWS} random draws; both sets centred (`metrics.centre`: the "
             "published DW-4 rows are not, and DESIGN's DW-4 floor W1/W2 of 2.88/3.47 are those of the uncentred rows); "
             "exact OT for W1/W2 on flattened coordinates, TVDs with ⌈√2000⌉ bins plus overflow bins. Lower is better. "
             "The ± of a mode row is the std over seeds; of the floor row and of the other-settings rows, over the draws. "
             "A cell's target is the paper's IWSM number or the floor + 2σ where that is higher, except LJ-55 E-TVD: "
             f"the issue asks for ≤ {LJ55_ETVD:.2f} there, so its target is min({LJ55_ETVD:.2f}, that). ✓ marks a mean "
             "at or below the target.", ""]
    records = load_records(runs, "*-seed*.json")
    for system in SYSTEMS:
        label = LABELS[system]
        recs = [r for r in records if r["system"] == system]
        paper = fixed_row("paper IWSM", (fmt(PAPER[system][m], digits=2) for m in METRICS))
        refs = references(system, reference_dir)
        lines += [f"## {label}", ""]
        if refs is None:
            owed = ["reference set owed"] * len(METRICS)
            lines += [f"Reference set owed: `{PROJECT[system].relative_to(REPO)}` does not exist yet (make it with "
                      f"`python3 data/make_reference.py {system}`); no floor, target or run until it does.", "",
                      *table_header(METRICS), fixed_row("floor", owed), paper, fixed_row("target", owed), "",
                      *unmet_and_owed(recs, MODES, SEEDS, METRICS, None), ""]
            continue
        floor = floor_row(system, refs, runs)
        beside = [pair_row(system, pair, runs / f"{system}-beside{k}.json") for k, pair in enumerate(refs["beside"])]
        goal = targets(system, floor)
        lines += [f"Reference: {refs['description']}; floor: {floor['sets']}."
                  + "".join(f" Note ({r['sets']}): {w}." for r in [floor, *beside] for w in r.get("warnings", [])), "",
                  *table_header(METRICS),
                  fixed_row(f"floor: {floor['sets']} ({floor['draws']} draws of {floor['n']} vs {floor['n']})",
                            (fmt(*floor[m]) for m in METRICS)),
                  *(fixed_row(f"beside the floor: {r['sets']}", (fmt(*r[m]) for m in METRICS)) for r in beside),
                  paper, fixed_row("target", (fmt(goal[m]) for m in METRICS)),
                  *mode_rows(recs, MODES, METRICS, goal), "", *unmet_and_owed(recs, MODES, SEEDS, METRICS, goal)]
        if system in PUBLISHED:
            sets = {"published test": refs["ref"], "published val": refs["beside"][0][1], "exact": refs["floor"][1]}
            lines += ["", "Largest |mean coordinate| of a particle (0 up to noise for a rotation-invariant "
                      "distribution): " + ", ".join(f"{k} {orientation_bias(x, system):.3f}" for k, x in sets.items())
                      + ". The floor is what exact samples score against the published test set; the published val "
                      "set scores lower there without being closer to the Boltzmann distribution: the two published "
                      "sets share rows and a non-uniform orientation (the mean coordinates above), and DW-4's also an "
                      "off-equilibrium slow coordinate (data/reference/README.md). Two independent exact sets score "
                      "the 'two halves, split by chain' row against each other."]
        if recs:
            sampling = (f"gradient steps: {', '.join(str(r['steps']) for r in recs)}; evaluated samples: "
                        f"{recs[0]['n_samples']} per run, drawn with {recs[0]['eval_steps']} reverse-SDE steps in "
                        f"{np.mean([r['sample_seconds'] for r in recs]):.1f} s on average")
            lines += notes(recs, KEYS, sampling)
            png = plot(system, recs, refs["ref"], results)
            if png:
                lines += ["", f"![{label} energy and pair-distance histograms]({png})"]
        tagged = load_records(runs / "settings", f"{system}-*.json")
        lines += settings_table(label, tagged, goal, METRICS, CPU_PROFILES[system])
        lines += nonfinite(recs + tagged)
        lines.append("")
    out = results / "particles.md"
    results.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out


def main() -> None:
    p = parser(__doc__, "--systems", SYSTEMS, MODES, SEEDS)
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="folder of particles.md and particles/ (default: benchmarks/results)")
    p.add_argument("--reference-dir", type=Path, default=REFERENCE_DIR,
                   help="folder of the published DW-4 / LJ-13 sets (default: <repo>/../shared/data/reference)")
    p.add_argument("--samples", type=int, default=N_EVAL, help="generated samples per run (at most the reference size)")
    p.add_argument("--eval-steps", type=int, help="reverse-SDE steps of the evaluated samples (default: the run's "
                                                  "sample_steps, those of its buffer refills)")
    p.add_argument("--rescore", action="store_true",
                   help="instead of training, score the saved samplers of the finished runs that --systems, "
                        "--modes, --seeds and --tag name again with --eval-steps (a record tagged <tag>-eval<N>)")
    args = p.parse_args()
    if args.eval_steps is not None and args.eval_steps < 1:
        p.error(f"--eval-steps must be positive, got {args.eval_steps}")
    if args.rescore and not args.eval_steps:
        p.error("--rescore needs --eval-steps")
    if not args.table:
        for system in args.systems:  # refuse before training anything
            if system not in SYSTEMS:
                p.error(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")
            if system in PROJECT and not PROJECT[system].exists():
                p.error(f"{LABELS[system]}: reference set owed ({PROJECT[system]} does not exist; make it with "
                        f"`python3 data/make_reference.py {system}`)")
        for system in args.systems:
            overrides = with_set(CPU_PROFILES[system], args.set)
            for mode in args.modes:
                for seed in args.seeds:
                    if args.rescore:
                        rec = rescore(system, mode, seed, args.tag, args.eval_steps, args.results,
                                      args.reference_dir, args.samples, args.conditions)
                    else:
                        rec = run(system, mode, seed, args.minutes, overrides, args.results, args.reference_dir,
                                  args.samples, args.tag, args.conditions, args.eval_steps)
                    print(system, mode, seed, {k: round(v[0], 4) for k, v in rec["metrics"].items()},
                          f"{rec['train_seconds'] / 60:.1f} min", flush=True)
                    table(args.results, args.reference_dir)
    table(args.results, args.reference_dir)


if __name__ == "__main__":
    main()
