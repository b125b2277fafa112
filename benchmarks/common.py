"""What the benchmark scripts share (gmm.py, particles.py; the CPU name also energy_throughput.py and
data/make_reference.py): the hardware line, the number format,
the per-run JSON record and where it goes, the pieces of a results table (mode rows with ✓,
unmet cells, owed runs, the settings notes, the tagged "other settings" table) and the command
line. Not a library: the scripts import it from their own folder (`python3 benchmarks/gmm.py`).

A run's metric value is a number (GMM: one 10k-vs-10k evaluation) or a `[mean, std]` pair
(particles: the mean ± std over the draws of `iwsm_md.metrics.repeated`); `score` and `cell`
read both.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def hardware() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_name()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch thread(s) per run), {gpu}"


def fmt(mean: float, std: float | None = None, digits: int = 3) -> str:
    """`mean` (± `std`) with `digits` decimals; in scientific notation from 1e5 on (a diverged run)."""
    kind = "e" if abs(mean) >= 1e5 else "f"
    return f"{mean:.{digits}{kind}}" if std is None else f"{mean:.{digits}{kind}} ± {std:.{digits}{kind}}"


def score(value: Any) -> float:
    """The number a target is checked against: the value itself, or the mean of a `[mean, std]`."""
    return float(value[0]) if isinstance(value, (list, tuple)) else float(value)


def cell(value: Any) -> str:
    """`fmt` of a number, or of a `[mean, std]` pair as "mean ± std"."""
    return fmt(*value) if isinstance(value, (list, tuple)) else fmt(value)


# ---------------------------------------------------------------------------------------------
# per-run records


def make_record(key: str, name: str, mode: str, seed: int, row: dict, sampler, config, train_s: float,
                sample_s: float, eval_steps: int, tag: str | None, overrides: dict, conditions: str | None,
                **extra: Any) -> dict:
    """The JSON record of one run: `key` names the system field ("target" for GMM, "system" for
    particles), `row` its metrics; `extra` fields (e.g. the reference set) go at the end."""
    final = sampler.history[-1] if sampler.history else None  # none in `direct` mode (nothing is trained)
    return {key: name, "mode": mode, "seed": seed, "metrics": row, "train_seconds": train_s,
            "sample_seconds": sample_s, "eval_steps": eval_steps, "epochs": len(sampler.history),
            "final": final, "config": {k: v for k, v in vars(config).items()},
            "steps": final["step"] if final else 0,
            "tag": tag, "overrides": overrides, "conditions": conditions, "hardware": hardware(),
            "date": datetime.date.today().isoformat(), **extra}


def save_record(record: dict, runs: Path, settings: Path, stem: str, samples: np.ndarray | None = None,
                sampler=None) -> Path:
    """Write `record` as `runs/<stem>.json` (and `samples` as `runs/<stem>-samples.npy`), or, for a
    tagged run of other settings, as `settings/<stem>-<tag>.json` (no samples); the trained `sampler`,
    if given, beside the JSON as `.pt` (not committed: .gitignore), for later evaluation with
    `iwsm_md.load`. Returns the JSON path."""
    tag = record.get("tag")
    if tag is None:
        runs.mkdir(parents=True, exist_ok=True)
        path = runs / f"{stem}.json"
        if samples is not None:
            np.save(runs / f"{stem}-samples.npy", samples)
    else:
        settings.mkdir(parents=True, exist_ok=True)
        path = settings / f"{stem}-{tag}.json"
    path.write_text(json.dumps(record, indent=1))
    if sampler is not None:
        sampler.save(path.with_suffix(".pt"))
    return path


def load_records(folder: Path, pattern: str) -> list[dict]:
    """The records `folder/pattern` (a glob), in file-name order; none if the folder is missing."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob(pattern))] if folder.exists() else []


# ---------------------------------------------------------------------------------------------
# table pieces


def table_header(metrics: Sequence[str]) -> list[str]:
    return ["| row | seeds | " + " | ".join(metrics) + " | train time (min) |", "|---" * (len(metrics) + 3) + "|"]


def fixed_row(label: str, cells: Iterable[str]) -> str:
    """A row without seeds or train time (floor, paper, target)."""
    return f"| {label} | – | " + " | ".join(cells) + " | – |"


def mode_rows(recs: list[dict], modes: Sequence[str], metrics: Sequence[str], goal: dict) -> list[str]:
    """One row per mode with runs: mean (± std over seeds, ddof 1, with two or more) of each metric,
    ✓ where the mean is at or below `goal`, and the mean training time."""
    lines = []
    for mode in modes:
        rs = [r for r in recs if r["mode"] == mode]
        if not rs:
            continue
        cells = []
        for m in metrics:
            vals = [score(r["metrics"][m]) for r in rs]
            mean, std = float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)
            cells.append(fmt(mean, std) + (" ✓" if mean <= goal[m] else ""))
        minutes = np.mean([r["train_seconds"] for r in rs]) / 60
        lines.append(f"| {mode} | {', '.join(str(r['seed']) for r in rs)} | " + " | ".join(cells)
                     + f" | {minutes:.1f} |")
    return lines


def unmet_and_owed(recs: list[dict], modes: Sequence[str], seeds: Sequence[int], metrics: Sequence[str],
                   goal: dict | None) -> list[str]:
    """The "Targets not reached" and "Runs owed" lines (no targets without `goal` or runs)."""
    if goal is None or not recs:
        lines = ["Targets not reached: – (no " + ("runs" if goal is not None else "targets") + " yet)."]
    else:
        means = {mode: mode_means(recs, mode, metrics) for mode in modes if any(r["mode"] == mode for r in recs)}
        unmet = [f"{mode} {m}" for mode in means for m in metrics if means[mode][m] > goal[m]]
        lines = ["Targets not reached: " + (", ".join(unmet) if unmet else "none") + "."]
        lines += versus(recs, metrics)
    owed = [f"{mode} seed {s}" for mode in modes for s in seeds
            if not any(r["mode"] == mode and r["seed"] == s for r in recs)]
    return lines + ["Runs owed: " + (", ".join(owed) if owed else "none") + "."]


def mode_means(recs: list[dict], mode: str, metrics: Sequence[str]) -> dict:
    """`{metric: mean over the seeds}` of `mode`'s runs among `recs` (it must have at least one)."""
    return {m: float(np.mean([score(r["metrics"][m]) for r in recs if r["mode"] == mode])) for m in metrics}


def versus(recs: list[dict], metrics: Sequence[str], mode: str = "iwsm", other: str = "idem") -> list[str]:
    """The line saying in which metrics `mode`'s mean over its seeds is below `other`'s (none
    unless both ran)."""
    means = {m: mode_means(recs, m, metrics) for m in (mode, other) if any(r["mode"] == m for r in recs)}
    if len(means) < 2:
        return []
    below = [k for k in metrics if means[mode][k] < means[other][k]]
    rest = [f"{k} ({means[mode][k]:.3f} against {means[other][k]:.3f})" for k in metrics if k not in below]
    return [f"{mode} below {other} (means over the seeds each ran): " + (", ".join(below) or "none")
            + ("; not below: " + ", ".join(rest) if rest else "") + "."]


def hardware_of(recs: list[dict]) -> str:
    """The hardware the runs `recs` ran on; which run ran where when that is more than one machine."""
    machines = list(dict.fromkeys(r["hardware"] for r in recs))
    if len(machines) == 1:
        return machines[0]
    runs = {h: ", ".join(f"{r['mode']} seed {r['seed']}" for r in recs if r["hardware"] == h) for h in machines}
    return "; ".join(f"{h} ({runs[h]})" for h in machines)


def notes(recs: list[dict], keys: Sequence[str], sampling: str) -> list[str]:
    """The settings (of the first run; a key its version lacked: None) and any other run's that
    differ, epochs, `sampling` (how the evaluated samples were drawn), hardware and each run's
    conditions."""
    cfg = recs[0]["config"]
    lines = ["", "Settings: " + ", ".join(f"{k}={cfg.get(k)}" for k in keys)
             + f"; epochs run: {', '.join(str(r['epochs']) for r in recs)}; " + sampling + ".",
             "Hardware: " + hardware_of(recs) + "."]
    for r in recs[1:]:
        differ = {k: r["config"].get(k) for k in keys if r["config"].get(k) != cfg.get(k)}
        if differ:
            lines.append(f"{r['mode']} seed {r['seed']} differs: {differ}.")
    return lines + [f"Conditions of {r['mode']} seed {r['seed']}: {r['conditions']}." for r in recs if r.get("conditions")]


def settings_table(title: str, recs: list[dict], goal: dict, metrics: Sequence[str], profile: dict) -> list[str]:
    """Rows of the tagged runs `recs` of one system: the setting changed from `profile`, its cost
    (seconds per gradient step, steps and epochs in the budget) and what it gives."""
    if not recs:
        return []
    lines = ["", f"### {title}: other settings (✓ as above)", "",
             "| tag | mode | seed | changed from the CPU profile | budget (min) | epochs | gradient steps | s / step "
             "(incl. buffer refills) | sampling the evaluated set (s) | " + " | ".join(metrics) + " |",
             "|---" * (len(metrics) + 9) + "|"]
    for r in sorted(recs, key=lambda r: (r["config"]["max_minutes"], r["tag"], r["mode"], r["seed"])):
        # the profile's settings this run's config differs in (a key it lacks: None), and any other it set
        changed = {k: r["config"].get(k) for k in profile if r["config"].get(k) != profile[k]}
        changed = {**changed, **{k: v for k, v in r["overrides"].items() if k not in profile}} or "—"
        cells = [cell(r["metrics"][m]) + (" ✓" if score(r["metrics"][m]) <= goal[m] else "") for m in metrics]
        per_step = f"{r['train_seconds'] / r['steps']:.3f}" if r["steps"] else "– (no training)"
        lines.append(f"| {r['tag']} | {r['mode']} | {r['seed']} | {changed} | {r['config']['max_minutes']:g} | {r['epochs']} | "
                     f"{r['steps']} | {per_step} | {r['sample_seconds']:.0f} | " + " | ".join(cells) + " |")
    lines += [""] + [f"Conditions of {r['tag']} {r['mode']} seed {r['seed']}: {r['conditions']}." for r in recs
                     if r.get("conditions")]
    lines += [f"{r['tag']} {r['mode']} seed {r['seed']}: the trained sampler of {r['rescored']['from']} scored again, "
              f"its samples drawn with {r['eval_steps']} reverse-SDE steps instead of {r['config']['sample_steps']} "
              f"(no retraining; {r['rescored']['hardware']}, {r['rescored']['date']})." for r in recs if r.get("rescored")]
    return lines


# ---------------------------------------------------------------------------------------------
# command line


def parser(doc: str, names_flag: str, names: Sequence[str], modes: Sequence[str], seeds: Sequence[int]
           ) -> argparse.ArgumentParser:
    """The options every benchmark script takes; `names_flag` ("--targets", "--systems") picks the
    systems. Scripts add their own after these."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(names_flag, nargs="*", default=list(names))
    p.add_argument("--modes", nargs="*", default=list(modes))
    p.add_argument("--seeds", nargs="*", type=int, default=list(seeds))
    p.add_argument("--minutes", type=float, default=25.0, help="training wall-time budget per run")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides on top of the CPU profile, e.g. n_mc=200")
    p.add_argument("--tag", help="label of a run of other settings (listed in its own table)")
    p.add_argument("--conditions", help="what else ran on the machine, if anything (shown in the table)")
    p.add_argument("--table", action="store_true", help="only rebuild the table from finished runs")
    return p


def with_set(profile: dict, items: Sequence[str]) -> dict:
    """`profile` with the `--set KEY=JSON` items applied."""
    overrides = dict(profile)
    for item in items:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    return overrides
