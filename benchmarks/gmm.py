"""GMM-40/80/120 benchmark (paper Table 1): IWSM and iDEM, several seeds, DESIGN.md's protocol.

Each run trains one (target, mode, seed), draws 10,000 samples and scores them against 10,000
exact samples (W1, W2, E-TVD, S-TVD); its numbers land in benchmarks/results/gmm/*.json as
soon as it finishes, so the table fills in over several sessions. `--table` (also run after
every run) rebuilds benchmarks/results/gmm.md from the runs present: each target headed by
its floor row (two independent exact sets), then mean ± std over seeds per mode, the settings,
the wall time and hardware, and the runs still owed; plus a PNG of samples per target.

    python benchmarks/gmm.py --targets gmm40 --modes iwsm idem --seeds 0 1 2
    python benchmarks/gmm.py --table

Other settings (what a cheaper or costlier one costs and gives) are runs with a tag, listed in
their own table under each target:

    python benchmarks/gmm.py --targets gmm40 --modes iwsm --seeds 0 --minutes 8 --tag k100 --set n_mc=100
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import iwsm_md
from iwsm_md import TrainConfig, metrics
from iwsm_md.potentials import builtin_energy

RESULTS = Path(__file__).parent / "results"
RUNS = RESULTS / "gmm"
SETTINGS = RUNS / "settings"  # tagged runs of other settings
TARGETS = ("gmm40", "gmm80", "gmm120")
MODES = ("iwsm", "idem")
SEEDS = (0, 1, 2)
N_EVAL = 10_000
# The paper's IWSM numbers: a cell's target is this, or the floor + 2σ where that is higher.
PAPER = {"gmm40": {"W1": 1.43, "W2": 3.12, "E-TVD": 0.05, "S-TVD": 0.19},
         "gmm80": {"W1": 3.21, "W2": 6.58, "E-TVD": 0.12, "S-TVD": 0.21},
         "gmm120": {"W1": 5.05, "W2": 9.90, "E-TVD": 0.23, "S-TVD": 0.30}}
METRICS = ("W1", "W2", "E-TVD", "S-TVD")
# CPU profile: cheaper than the published settings (K=500, 1000 reverse-SDE steps per buffer refill,
# 1000 epochs), within a wall-time budget; the score estimate blends Eq. 7 with Tweedie's at the
# width of a mode (blend_length = mode std in the rescaled space), which is what makes K = 20 enough.
CPU_PROFILE = dict(n_mc=20, steps_per_epoch=100, sample_steps=200, samples_per_epoch=2000, epochs=100_000)
EVAL_STEPS = 1000  # reverse-SDE steps of the 10,000 evaluated samples (the published number)


def hardware() -> str:
    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch thread(s) per run), {gpu}"


def exact(target: str, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return builtin_energy(target).sample(N_EVAL, generator=g).numpy()


def floor_row(target: str) -> dict:
    path = RUNS / f"{target}-floor.json"
    if path.exists():
        return json.loads(path.read_text())
    energy = builtin_energy(target)
    rows = [metrics.floor(exact(target, 1000 + 2 * k), exact(target, 1001 + 2 * k), energy=energy) for k in range(3)]
    row = {m: (float(np.mean([r[m] for r in rows])), float(np.std([r[m] for r in rows], ddof=1))) for m in METRICS}
    row["pairs"] = len(rows)
    RUNS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    return row


def run(target: str, mode: str, seed: int, minutes: float, overrides: dict, tag: str | None = None,
        conditions: str | None = None) -> dict:
    config = TrainConfig.published(target, mode=mode, seed=seed, max_minutes=minutes)
    config = TrainConfig.with_overrides(config, {"blend_length": builtin_energy(target).std / config.scale, **overrides})
    t0 = time.perf_counter()
    sampler = iwsm_md.train(target, config=config)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = sampler.sample(N_EVAL, steps=EVAL_STEPS, seed=10_000 + seed).double().numpy()
    sample_s = time.perf_counter() - t0
    row = metrics.evaluate(x, exact(target, 2000 + seed), energy=builtin_energy(target))
    record = {"target": target, "mode": mode, "seed": seed, "metrics": row, "train_seconds": train_s,
              "sample_seconds": sample_s, "eval_steps": EVAL_STEPS, "epochs": len(sampler.history),
              "final": sampler.history[-1], "config": {k: v for k, v in vars(config).items()},
              "steps": sampler.history[-1]["step"],
              "tag": tag, "overrides": overrides, "conditions": conditions, "hardware": hardware(), "date": datetime.date.today().isoformat()}
    if tag is None:
        RUNS.mkdir(parents=True, exist_ok=True)
        (RUNS / f"{target}-{mode}-seed{seed}.json").write_text(json.dumps(record, indent=1))
        np.save(RUNS / f"{target}-{mode}-seed{seed}-samples.npy", x[:2000].astype(np.float32))
    else:
        SETTINGS.mkdir(parents=True, exist_ok=True)
        (SETTINGS / f"{target}-{mode}-seed{seed}-{tag}.json").write_text(json.dumps(record, indent=1))
    return record


def fmt(mean: float, std: float | None = None, digits: int = 3) -> str:
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def plot(target: str, records: list[dict]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = builtin_energy(target).means.numpy()
    shown = [r for r in records if (RUNS / f"{target}-{r['mode']}-seed{r['seed']}-samples.npy").exists()]
    if not shown:
        return None
    modes = sorted({r["mode"] for r in shown})
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        r = min((r for r in shown if r["mode"] == mode), key=lambda r: r["seed"])
        x = np.load(RUNS / f"{target}-{mode}-seed{r['seed']}-samples.npy")
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4, label="samples")
        ax.scatter(means[:, 0], means[:, 1], marker="x", c="red", s=30, label="mode centres")
        ax.set_title(f"{target} {mode} seed {r['seed']} (2000 samples)")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7)
    name = f"gmm/{target}-samples.png"
    fig.savefig(RESULTS / name, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return name


def table() -> None:
    lines = ["# GMM benchmarks (paper Table 1)", "",
             "Generated by `python benchmarks/gmm.py` (see its docstring). Protocol: DESIGN.md — 10,000 generated vs "
             "10,000 exact samples, exact OT for W1/W2, TVDs with overflow bins. Lower is better. A cell's target is "
             "the paper's IWSM number or the floor + 2σ where that is higher; ✓ marks a mean at or below it.", ""]
    records = [json.loads(p.read_text()) for p in sorted(RUNS.glob("gmm*-seed*.json"))] if RUNS.exists() else []
    for target in TARGETS:
        recs = [r for r in records if r["target"] == target]
        if not recs:
            lines += [f"## {target.upper()}", "", "No runs yet: all owed.", ""]
            continue
        floor = floor_row(target)
        goal = {m: max(PAPER[target][m], floor[m][0] + 2 * floor[m][1]) for m in METRICS}
        lines += [f"## {target.upper()}", "", "| row | seeds | W1 | W2 | E-TVD | S-TVD | train time (min) |",
                  "|---|---|---|---|---|---|---|",
                  f"| floor: exact vs exact ({floor['pairs']} pairs) | – | "
                  + " | ".join(fmt(*floor[m]) for m in METRICS) + " | – |",
                  "| paper IWSM | – | " + " | ".join(fmt(PAPER[target][m], digits=2) for m in METRICS) + " | – |",
                  "| target | – | " + " | ".join(fmt(goal[m]) for m in METRICS) + " | – |"]
        for mode in MODES:
            rs = [r for r in recs if r["mode"] == mode]
            if not rs:
                continue
            cells = []
            for m in METRICS:
                vals = [r["metrics"][m] for r in rs]
                mean, std = float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)
                cells.append(fmt(mean, std) + (" ✓" if mean <= goal[m] else ""))
            minutes = np.mean([r["train_seconds"] for r in rs]) / 60
            lines.append(f"| {mode} | {', '.join(str(r['seed']) for r in rs)} | " + " | ".join(cells)
                         + f" | {minutes:.1f} |")
        unmet = [f"{mode} {m}" for mode in MODES for m in METRICS
                 if any(r["mode"] == mode for r in recs)
                 and np.mean([r["metrics"][m] for r in recs if r["mode"] == mode]) > goal[m]]
        lines += ["", "Targets not reached: " + (", ".join(unmet) if unmet else "none") + "."]
        owed = [f"{mode} seed {s}" for mode in MODES for s in SEEDS
                if not any(r["mode"] == mode and r["seed"] == s for r in recs)]
        lines += ["Runs owed: " + (", ".join(owed) if owed else "none") + "."]
        if recs:
            cfg = recs[0]["config"]
            keys = ("n_mc", "blend_length", "batch_size", "snis_n", "steps_per_epoch", "sample_steps",
                    "samples_per_epoch", "lr", "loss_weight", "loss_floor", "sigma_min", "sigma_max", "scale", "net",
                    "hidden", "layers", "max_minutes")
            lines += ["", "Settings: " + ", ".join(f"{k}={cfg[k]}" for k in keys)
                      + f"; epochs run: {', '.join(str(r['epochs']) for r in recs)}; "
                      f"evaluated samples drawn with {recs[0].get('eval_steps', EVAL_STEPS)} reverse-SDE steps.",
                      f"Hardware: {recs[0]['hardware']}."]
            lines += [f"Conditions of {r['mode']} seed {r['seed']}: {r['conditions']}." for r in recs if r.get("conditions")]
            png = plot(target, recs)
            if png:
                lines += ["", f"![{target} samples]({png})"]
        lines += settings_table(target, goal)
        lines.append("")
    (RESULTS / "gmm.md").write_text("\n".join(lines))


def settings_table(target: str, goal: dict) -> list[str]:
    """Rows of the tagged runs of `target`: the setting changed, its cost (seconds per gradient step,
    steps and epochs in the budget) and what it gives."""
    recs = [json.loads(p.read_text()) for p in sorted(SETTINGS.glob(f"{target}-*.json"))] if SETTINGS.exists() else []
    if not recs:
        return []
    lines = ["", f"### {target.upper()}: other settings (one seed each, shorter budgets; ✓ as above)", "",
             "| tag | mode | changed from the CPU profile | budget (min) | epochs | gradient steps | s / step "
             "(incl. buffer refills) | W1 | W2 | E-TVD | S-TVD |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(recs, key=lambda r: (r["config"]["max_minutes"], r["tag"], r["mode"])):
        changed = {k: v for k, v in r["overrides"].items() if CPU_PROFILE.get(k) != v} or "—"
        cells = [fmt(r["metrics"][m]) + (" ✓" if r["metrics"][m] <= goal[m] else "") for m in METRICS]
        lines.append(f"| {r['tag']} | {r['mode']} | {changed} | {r['config']['max_minutes']:g} | {r['epochs']} | "
                     f"{r['steps']} | {r['train_seconds'] / r['steps']:.3f} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="*", default=list(TARGETS))
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--minutes", type=float, default=25.0, help="training wall-time budget per run")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides on top of the CPU profile, e.g. n_mc=200")
    parser.add_argument("--tag", help="label of a run of other settings (listed in its own table)")
    parser.add_argument("--conditions", help="what else ran on the machine, if anything (shown in the table)")
    parser.add_argument("--table", action="store_true", help="only rebuild the table from finished runs")
    args = parser.parse_args()
    if not args.table:
        overrides = dict(CPU_PROFILE)
        for item in args.set:
            key, value = item.split("=", 1)
            overrides[key] = json.loads(value)
        for target in args.targets:
            for mode in args.modes:
                for seed in args.seeds:
                    rec = run(target, mode, seed, args.minutes, overrides, args.tag, args.conditions)
                    print(target, mode, seed, rec["metrics"], f"{rec['train_seconds'] / 60:.1f} min", flush=True)
                    table()
    table()


if __name__ == "__main__":
    main()
