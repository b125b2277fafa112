"""The `iwsm-md` command line: train, sample, evaluate, export, mcmc.

    iwsm-md train --system gmm40 --config gmm.toml --set n_mc=50 --out runs/gmm40
    iwsm-md train --openmm-xml system.xml --temperature 300 --out runs/mine --epochs 50
    iwsm-md sample --sampler runs/gmm40/sampler.pt -n 10000 --out samples.npy
    iwsm-md evaluate --sampler runs/dw4 --reference ref.npz --out runs/dw4/evaluation
    iwsm-md export --samples samples.npy --system lj13 --out samples.dcd
    iwsm-md mcmc --system dw4 -n 10000 --out ref.npz

Systems, for every subcommand that needs one: `--system NAME` (built-in, kT = 1), or
`--openmm-xml FILE --temperature K [--spatial-dim 2|3]` (a serialized `openmm.System`), or
`--ase-structure FILE --calculator module:callable [--calculator-args JSON] --temperature K`.

Training settings are `TrainConfig` fields. Precedence, lowest first: the published settings of
a built-in system (else `TrainConfig()`; on `--resume`, the checkpoint's), the `--config` TOML
file (a flat table or a `[train]` table), then `--set key=value` and `--key value` flags in
command-line order. Values are TOML literals (`--set lr=1e-3`, `--set mode="idem"`); a value that
is no TOML literal is taken as a string (`--mode idem`); `none` unsets an optional field.

Bad input (unknown system or key, missing temperature, unreadable file, wrong value type)
exits with status 2 and a one-line message; `--debug` (or IWSM_MD_DEBUG=1) shows tracebacks.
This module only parses arguments and calls the library.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from iwsm_md.training import TrainConfig

PROG = "iwsm-md"
SAMPLE_FORMATS = (".npy", ".npz", ".dcd", ".pdb", ".xyz", ".extxyz")
PARTICLE_PROTOCOL_N = 2000  # configurations compared by `evaluate` by default (DESIGN.md, "Metrics")


class CLIError(Exception):
    """Bad input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (with a pointer to --help), not usage + error."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------------------------
# training settings: TOML file, --set key=value and --key value


def _config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _parse_literal(raw: str) -> Any:
    """A TOML literal (`50`, `1e-3`, `true`, `"idem"`), or `raw` itself as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()


def _type_name(hint) -> str:
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}
    args = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
    text = " or ".join(names.get(a, getattr(a, "__name__", str(a))) for a in args)
    return text + (" or none" if type(None) in typing.get_args(hint) else "")


def _coerce(key: str, value: Any, source: str) -> Any:
    """`value` checked against the type of `TrainConfig.<key>` (ints accepted for floats,
    "none" for optional fields); CLIError naming the key, the valid keys and the fix otherwise."""
    fields = _config_fields()
    if key not in fields:
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise CLIError(f"unknown config key {key!r} (from {source}); {hint}valid keys: {', '.join(fields)}")
    hint = typing.get_type_hints(TrainConfig)[key]
    args = typing.get_args(hint) or (hint,)
    if type(None) in args and isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    for t in (a for a in args if a is not type(None)):
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
        if t not in (bool, int, float, str):  # a type this parser does not know: TrainConfig judges
            return value
    example = {bool: "true", int: "10", float: "1e-3", str: '"text"'}.get(next(a for a in args if a is not type(None)), "...")
    raise CLIError(f"config key {key!r} must be {_type_name(hint)}, got {value!r} (from {source}): "
                   f"e.g. --set {key}={example}")


def _read_config_file(path: str) -> list[tuple[str, Any, str]]:
    """(key, value, source) of a TOML file: a flat table of TrainConfig keys, or a [train] table."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"config file {p} does not exist: check the --config path")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise CLIError(f"cannot parse config file {p}: {err}; fix its TOML syntax") from None
    tables = {k for k, v in data.items() if isinstance(v, dict)}
    if "train" in data and "train" not in tables:
        raise CLIError(f"config file {p}: 'train' must be a table ([train]) of TrainConfig keys")
    if tables - {"train"}:
        raise CLIError(f"config file {p} has table(s) {sorted(tables - {'train'})}: put TrainConfig keys "
                       "at the top level or under [train]")
    items = {k: v for k, v in data.items() if k != "train"}
    items.update(data.get("train", {}))
    return [(k, v, str(p)) for k, v in items.items()]


class _Override(argparse.Action):
    """Collects `--set key=value` and `--key value` in command-line order into `overrides`."""

    def __init__(self, option_strings, dest, key: str | None = None, **kwargs):
        self.key = key
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if self.key is None:
            key, sep, raw = values.partition("=")
            if not sep or not key.strip():
                raise CLIError(f"--set expects key=value, got {values!r}: e.g. --set n_mc=50")
            key = key.strip()
        else:
            key, raw = self.key, values
        items = list(getattr(namespace, "overrides", None) or [])
        items.append((key, _parse_literal(raw), option_string if self.key else f"--set {values}"))
        setattr(namespace, "overrides", items)


def resolve_config(base: TrainConfig, config_file: str | None, overrides: Sequence[tuple[str, Any, str]]) -> TrainConfig:
    """`base` updated by the TOML file, then by the command-line overrides (later wins)."""
    items = (_read_config_file(config_file) if config_file else []) + list(overrides or [])
    values = {key: _coerce(key, value, source) for key, value, source in items}
    try:
        return TrainConfig.with_overrides(base, values)
    except (TypeError, ValueError) as err:
        raise CLIError(f"invalid training settings: {err}") from None


def _toml_literal(v) -> str:
    """A value as a TOML literal (None as the string "none", which `--config` reads back as None)."""
    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_literal(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def config_toml(config: TrainConfig, header: str = "") -> str:
    """The resolved config as a TOML `[train]` table that `--config` reads back (None as "none")."""

    lines = [f"# {line}" for line in header.splitlines()] + ["[train]"]
    lines += [f"{k} = {_toml_literal(v)}" for k, v in dataclasses.asdict(config).items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# systems


@dataclasses.dataclass
class SystemSpec:
    """A system chosen on the command line (validated, not yet built)."""

    kind: str  # "builtin", "openmm", "ase"
    name: str  # built-in name or file stem
    path: Path | None = None
    temperature: float | None = None
    spatial_dim: int = 3
    calculator: str | None = None
    calculator_args: dict = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "builtin":
            return f"built-in system {self.name} (kT = 1)"
        extra = f", spatial_dim {self.spatial_dim}" if self.kind == "openmm" else f", calculator {self.calculator}"
        return f"{self.kind} system {self.path} at {self.temperature} K{extra}"


def _add_system_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "system (one of --system, --openmm-xml, --ase-structure)",
        "Built-in systems are in reduced units (kT = 1); OpenMM systems give samples in nm, ASE ones in Å.")
    g.add_argument("--system", metavar="NAME", help="built-in system: gmm40, gmm80, gmm120, dw4, lj13, lj55")
    g.add_argument("--openmm-xml", metavar="FILE", help="an openmm.System serialized with XmlSerializer")
    g.add_argument("--ase-structure", metavar="FILE", help="a structure file ASE reads (xyz, extxyz, pdb, ...)")
    g.add_argument("--temperature", type=float, metavar="K", help="kelvin; required with --openmm-xml / --ase-structure")
    g.add_argument("--spatial-dim", type=int, choices=(2, 3), help="with --openmm-xml: 2 for planar systems (z = 0); default 3")
    g.add_argument("--calculator", metavar="MODULE:CALLABLE",
                   help="with --ase-structure: a callable (in a module, or FILE.py:CALLABLE) returning an ASE "
                        "calculator, e.g. ase.calculators.lj:LennardJones")
    g.add_argument("--calculator-args", metavar="JSON", help="keyword arguments of the calculator, a JSON object")


def system_spec(args, required: bool = True) -> SystemSpec | None:
    """Validate the system options of `args`; None if none was given and not `required`."""
    from iwsm_md.potentials.builtin import BUILTIN

    chosen = [o for o, v in (("--system", args.system), ("--openmm-xml", args.openmm_xml),
                             ("--ase-structure", args.ase_structure)) if v is not None]
    if len(chosen) > 1:
        raise CLIError(f"{' and '.join(chosen)} both choose a system: give only one")
    if not chosen:
        for opt, value in (("--temperature", args.temperature), ("--spatial-dim", args.spatial_dim),
                           ("--calculator", args.calculator), ("--calculator-args", args.calculator_args)):
            if value is not None:
                raise CLIError(f"{opt} needs a system: add --openmm-xml FILE or --ase-structure FILE")
        if required:
            raise CLIError("no system given: add --system NAME (built-in: " + ", ".join(BUILTIN)
                           + "), --openmm-xml FILE --temperature K, or --ase-structure FILE --calculator SPEC --temperature K")
        return None
    if args.system is not None:
        key = args.system.lower().replace("-", "").replace("_", "")
        if key not in BUILTIN:
            raise CLIError(f"unknown system {args.system!r}: use --system with one of {', '.join(BUILTIN)}, "
                           "or --openmm-xml / --ase-structure for your own")
        for opt, value in (("--temperature", args.temperature), ("--spatial-dim", args.spatial_dim),
                           ("--calculator", args.calculator), ("--calculator-args", args.calculator_args)):
            if value is not None:
                raise CLIError(f"{opt} does not apply to built-in systems (reduced units, kT = 1): drop it")
        return SystemSpec("builtin", key)
    opt, path = (("--openmm-xml", args.openmm_xml) if args.openmm_xml is not None
                 else ("--ase-structure", args.ase_structure))
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"{opt} file {path} does not exist: check the path")
    if args.temperature is None:
        raise CLIError(f"{opt} needs --temperature in kelvin: add e.g. --temperature 300")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise CLIError(f"--temperature must be a positive number of kelvin, got {args.temperature}")
    if args.openmm_xml is not None:
        for o, value in (("--calculator", args.calculator), ("--calculator-args", args.calculator_args)):
            if value is not None:
                raise CLIError(f"{o} is for --ase-structure, not --openmm-xml: drop it")
        return SystemSpec("openmm", path.stem, path, args.temperature, args.spatial_dim or 3)
    if args.spatial_dim is not None:
        raise CLIError("--spatial-dim is for --openmm-xml; ASE structures are 3-D: drop it")
    if args.calculator is None:
        raise CLIError("--ase-structure needs --calculator MODULE:CALLABLE, e.g. --calculator ase.calculators.lj:LennardJones")
    kwargs = {}
    if args.calculator_args is not None:
        try:
            kwargs = json.loads(args.calculator_args)
        except json.JSONDecodeError as err:
            raise CLIError(f"--calculator-args is not valid JSON ({err}): e.g. --calculator-args '{{\"sigma\": 1.0}}'") from None
        if not isinstance(kwargs, dict):
            raise CLIError(f"--calculator-args must be a JSON object of keyword arguments, got {args.calculator_args!r}")
    return SystemSpec("ase", path.stem, path, args.temperature, 3, args.calculator, kwargs)


def _calculator(spec: SystemSpec):
    import importlib

    module_name, sep, attr = spec.calculator.rpartition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"--calculator must be MODULE:CALLABLE or FILE.py:CALLABLE, got {spec.calculator!r}: "
                       "e.g. ase.calculators.lj:LennardJones")
    if module_name.endswith(".py"):  # a user's file
        import importlib.util

        path = _existing(module_name, "--calculator file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        obj = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(obj)
        except Exception as err:  # the user's code failed to import
            raise CLIError(f"cannot import {path} of --calculator: {type(err).__name__}: {err}") from err
    else:
        try:
            obj = importlib.import_module(module_name)
        except ImportError as err:
            raise CLIError(f"cannot import module {module_name!r} of --calculator ({err}): check the name and "
                           "install it, or give FILE.py:CALLABLE") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"module {module_name!r} has no {attr!r} (from --calculator): check the name")
        obj = getattr(obj, part)
    try:
        return obj(**spec.calculator_args)
    except Exception as err:  # any failure of user code building the calculator is bad input
        raise CLIError(f"--calculator {spec.calculator} with --calculator-args {spec.calculator_args} failed: "
                       f"{type(err).__name__}: {err}") from None


def build_system(spec: SystemSpec):
    """What `iwsm_md.train` takes: a built-in name, an `openmm.System` or an `ase.Atoms` with its calculator."""
    if spec.kind == "builtin":
        return spec.name
    if spec.kind == "openmm":
        import openmm

        try:
            system = openmm.XmlSerializer.deserialize(spec.path.read_text())
        except (ValueError, UnicodeDecodeError, openmm.OpenMMException) as err:
            raise CLIError(f"cannot read {spec.path} as an OpenMM XML System ({err}): write it with "
                           "openmm.XmlSerializer.serialize(system)") from None
        if not isinstance(system, openmm.System):
            raise CLIError(f"{spec.path} holds a serialized {type(system).__name__}, not an openmm.System")
        return system
    import ase.io

    try:
        atoms = ase.io.read(spec.path)
    except Exception as err:  # ASE raises many types for unreadable files
        raise CLIError(f"cannot read {spec.path} as a structure with ASE ({type(err).__name__}: {err}): "
                       "check the file and its suffix") from None
    atoms.calc = _calculator(spec)
    return atoms


def build_energy(spec: SystemSpec):
    """The `Energy` (E/kT) of a system."""
    from iwsm_md.energies import from_ase, from_openmm
    from iwsm_md.potentials.builtin import builtin_energy

    system = build_system(spec)
    if spec.kind == "builtin":
        return builtin_energy(system)
    if spec.kind == "openmm":
        return from_openmm(system, spec.temperature, spec.spatial_dim)
    return from_ase(system, spec.temperature)


def _element_of(spec: SystemSpec | None, sampler, given: str | None):
    """Element symbols for trajectory files: --element, else the ASE structure's, else Ar."""
    if given:
        return given.split(",") if "," in given else given
    if spec is not None and spec.kind == "ase":
        return build_system(spec).get_chemical_symbols()
    source = getattr(sampler, "source", None)
    if source and source.get("kind") == "ase":
        import pickle

        return pickle.loads(source["atoms"]).get_chemical_symbols()
    return "Ar"


# ---------------------------------------------------------------------------------------------
# files


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{what} {p} does not exist: check the path")
    return p


def load_sampler(path: str | Path):
    """`iwsm_md.load` of a sampler file, or of DIR/sampler.pt for a run directory."""
    import iwsm_md

    p = Path(path)
    if p.is_dir():
        p = p / "sampler.pt"
    if not p.is_file():
        raise CLIError(f"sampler file {p} does not exist: train one with 'iwsm-md train --out DIR' "
                       "and pass DIR/sampler.pt (or DIR)")
    return iwsm_md.load(p), p


def _check_format(path: str | Path, option: str = "--out") -> Path:
    p = Path(path)
    if p.suffix.lower() not in SAMPLE_FORMATS:
        raise CLIError(f"{option} {p}: unknown format {p.suffix or '(no suffix)'!r}; use one of {', '.join(SAMPLE_FORMATS)}")
    return p


def read_samples(path: str | Path, energy, option: str = "--samples"):
    """`(n, energy.dim)` float64 samples from .npy, .npz (key "samples") or a trajectory file."""
    import numpy as np

    from iwsm_md import io

    p = _check_format(_existing(path, f"{option} file"), option)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        x = np.load(p)
    elif suffix == ".npz":
        with np.load(p) as data:
            if "samples" in data:
                x = data["samples"]
            elif len(data.files) == 1:
                x = data[data.files[0]]
            else:
                raise CLIError(f"{p} has arrays {data.files} but no 'samples': save the samples under that key")
    else:
        x = io.read(p, spatial_dim=energy.spatial_dim, length_unit=energy.length_unit).positions
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        x = x.reshape(x.shape[0], -1)
    if x.ndim != 2 or x.shape[1] != energy.dim or x.shape[0] == 0:
        raise CLIError(f"{p} holds an array of shape {x.shape}; the system needs (n, {energy.dim}) = "
                       f"(n, {energy.n_particles} particles x {energy.spatial_dim})")
    return x


def write_samples(path: Path, x, energy, element="Ar", energies=None, extra: dict | None = None) -> list[Path]:
    """Write `(n, dim)` samples; energies (E/kT) are computed where the format holds them
    (.npz, .extxyz). Returns the files written (a .dcd comes with its topology .pdb)."""
    import numpy as np

    from iwsm_md import io, metrics

    path = _check_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".extxyz") and energies is None:
        energies = metrics.energies(energy, x)
    if suffix == ".npy":
        np.save(path, x)
        return [path]
    if suffix == ".npz":
        np.savez(path, samples=x, energies=np.asarray(energies), **(extra or {}))
        return [path]
    io.write(path, x, n_particles=energy.n_particles, spatial_dim=energy.spatial_dim, length_unit=energy.length_unit,
             element=element, energies=energies if suffix == ".extxyz" else None)
    return [path, path.with_suffix(".pdb")] if suffix == ".dcd" else [path]


def _jsonable(v):
    """JSON-safe copy: NaN/inf floats become null (strict JSON has neither)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return _jsonable(v.item())
    return v


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(_jsonable(data), indent=2) + "\n")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path


def _plot_scatter(x, ref):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(ref[:, 0], ref[:, 1], s=2, color="0.5", alpha=0.4, label="reference")
    ax.scatter(x[:, 0], x[:, 1], s=2, color="C0", alpha=0.5, label="sample")
    ax.set_aspect("equal")
    ax.legend(fontsize="small", markerscale=4)
    return fig


# ---------------------------------------------------------------------------------------------
# subcommands


def cmd_train(args) -> int:
    import iwsm_md
    from iwsm_md import analysis, distributed
    from iwsm_md.training import read_state

    spec = system_spec(args)
    out = Path(args.out or f"runs/{spec.name}")
    checkpoint, final = out / "checkpoint.pt", out / "sampler.pt"
    if args.checkpoint_every < 1:
        raise CLIError(f"--checkpoint-every must be a positive number of gradient steps, got {args.checkpoint_every}")
    done = 0
    if args.resume:
        if not checkpoint.is_file():
            raise CLIError(f"--resume: no checkpoint {checkpoint} to continue from; run without --resume to start")
        state = read_state(checkpoint)
        base = TrainConfig.from_dict(state["config"], f"checkpoint {checkpoint}")
        done = sum(not h.get("partial") for h in state["history"])
    else:
        if (not args.force and not args.dry_run and distributed.rank() == 0
                and (checkpoint.exists() or final.exists())):
            raise CLIError(f"{out} already holds a run: add --resume to continue it, --force to start over, "
                           "or choose another --out")
        base = TrainConfig.published(spec.name) if spec.kind == "builtin" else TrainConfig()
    config = resolve_config(base, args.config, args.overrides)
    header = f"iwsm-md train: {spec.describe()}"
    if args.dry_run:
        print(config_toml(config, header), end="")
        return 0

    system = build_system(spec)
    main = distributed.rank() == 0  # under torchrun, rank 0 alone writes files and shows progress
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(config_toml(config, header))
    bar = None  # opened at the first epoch's end: an error while the system is built stays one line

    def log(entry: dict) -> None:
        nonlocal bar
        if not args.progress:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=config.epochs, initial=min(done, config.epochs), desc="train", unit="epoch",
                       dynamic_ncols=True, file=sys.stderr)
        post = {"loss": f"{entry['loss']:.4g}", "inner_ess": f"{entry['inner_ess']:.3g}"}
        if math.isfinite(entry.get("weight_ess", math.nan)):
            post["weight_ess"] = f"{entry['weight_ess']:.3f}"
        bar.set_postfix(post, refresh=False)
        bar.update(entry["epoch"] + 1 - bar.n)

    try:
        sampler = iwsm_md.train(system, temperature=spec.temperature, spatial_dim=spec.spatial_dim, config=config,
                                log=log, checkpoint=checkpoint, checkpoint_every=args.checkpoint_every,
                                resume=args.resume)
    finally:
        if bar is not None:
            bar.close()
    if not main:
        return 0
    sampler.save(final)
    _write_json(out / "history.json", sampler.history)
    written = [final, out / "config.toml", out / "history.json"]
    if sampler.history:
        written.append(_save(analysis.plot_history(sampler.history, config.mode), out / "training.png"))
    last = sampler.history[-1] if sampler.history else {}
    summary = (f"{len(sampler.history)} epochs, final loss {last['loss']:.4g}, "
               f"{last['seconds']:.1f} s of training") if last else "no training epochs (mode 'direct')"
    print(f"trained {spec.describe()}: {summary}")
    print("wrote " + ", ".join(str(p) for p in written) + (f", {checkpoint}" if checkpoint.exists() else ""))
    return 0


def cmd_sample(args) -> int:
    out = _check_format(args.out)
    if args.n < 1:
        raise CLIError(f"-n must be a positive number of samples, got {args.n}")
    sampler, path = load_sampler(args.sampler)
    x = sampler.sample(args.n, steps=args.steps, method=args.method, seed=args.seed)
    written = write_samples(out, x, sampler.energy, _element_of(None, sampler, args.element))
    print(f"wrote {args.n} samples of {path} to " + ", ".join(map(str, written)))
    return 0


def _subset(x, n: int, rng):
    return x if x.shape[0] <= n else x[rng.choice(x.shape[0], n, replace=False)]


def cmd_evaluate(args) -> int:
    import numpy as np
    import torch

    from iwsm_md import analysis, metrics

    spec = system_spec(args, required=False)
    if args.sampler is None and spec is None:
        raise CLIError("evaluate needs --sampler FILE, or --samples FILE with a system (--system, --openmm-xml, ...)")
    if args.sampler is not None and spec is not None:
        raise CLIError("--sampler already fixes the system: drop the system options")
    if args.sampler is None and args.samples is None:
        raise CLIError("without --sampler, give the samples to score with --samples FILE")
    if args.n is not None and args.n < 1:
        raise CLIError(f"-n must be positive, got {args.n}")
    sampler, sampler_path = load_sampler(args.sampler) if args.sampler is not None else (None, None)
    energy = sampler.energy if sampler is not None else build_energy(spec)
    rng = np.random.default_rng(args.seed)

    n = args.n
    if args.reference is not None:
        ref = read_samples(args.reference, energy, "--reference")
        reference_name = str(args.reference)
    elif hasattr(energy, "sample"):  # exact samples of the target (GMMs)
        g = torch.Generator().manual_seed(10_000 + args.seed)
        ref = energy.sample(n or PARTICLE_PROTOCOL_N, generator=g).double().cpu().numpy()
        reference_name = "exact samples of the target"
    else:
        raise CLIError("--reference FILE is required for this system (no exact samples): make one with "
                       "'iwsm-md mcmc ... --out ref.npz'")
    if args.samples is not None:
        x = read_samples(args.samples, energy)
        samples_name = str(args.samples)
    else:
        x = sampler.sample(n or min(PARTICLE_PROTOCOL_N, ref.shape[0]), steps=args.steps, method=args.method,
                           seed=args.seed).double().cpu().numpy()
        samples_name = f"{x.shape[0]} samples of {sampler_path}"
    n = n or min(PARTICLE_PROTOCOL_N, x.shape[0], ref.shape[0])
    x, ref = _subset(x, n, rng), _subset(ref, n, rng)
    particles = energy.n_particles > 1
    if particles:
        x, ref = metrics.centre(x, energy.n_particles, energy.spatial_dim), metrics.centre(ref, energy.n_particles, energy.spatial_dim)
    row = metrics.evaluate(x, ref, energy=energy)

    out = Path(args.out) if args.out else (sampler_path.parent / "evaluation" if sampler_path else Path("evaluation"))
    out.mkdir(parents=True, exist_ok=True)
    e_x, e_ref = metrics.energies(energy, x), metrics.energies(energy, ref)
    plots = [_save(analysis.plot_energy(e_x, e_ref), out / "energy.png")]
    unit = energy.length_unit
    if particles:
        plots.append(_save(analysis.plot_pair_distances(x, ref, energy.n_particles, energy.spatial_dim,
                                                        length_unit=unit), out / "pair_distances.png"))
        d_ref = metrics.pair_distances(ref, energy.n_particles, energy.spatial_dim)
        r_max = 1.05 * float(d_ref[np.isfinite(d_ref)].max())
        plots.append(_save(analysis.plot_rdf(x, energy.n_particles, energy.spatial_dim, r_max, 100, reference=ref,
                                             length_unit=unit), out / "rdf.png"))
    elif energy.dim == 2:
        plots.append(_save(_plot_scatter(x, ref), out / "samples.png"))
    report = {"metrics": row, "n_samples": int(x.shape[0]), "n_reference": int(ref.shape[0]),
              "samples": samples_name, "reference": reference_name, "centred": particles,
              "length_unit": unit, "mean_energy": float(np.nanmean(e_x)), "mean_energy_reference": float(np.mean(e_ref))}
    _write_json(out / "metrics.json", report)

    print(f"{samples_name} vs {reference_name}: {x.shape[0]} vs {ref.shape[0]} configurations"
          + (" (centred)" if particles else ""))
    print(f"{'metric':<14}{'value':>12}")
    for key, value in row.items():
        print(f"{key:<14}{value:>12.4g}" if isinstance(value, float) else f"{key:<14}{value:>12}")
    print(f"{'mean E/kT':<14}{report['mean_energy']:>12.4g}   (reference {report['mean_energy_reference']:.4g})")
    print("wrote " + ", ".join(str(p) for p in [out / "metrics.json", *plots]))
    return 0


def cmd_export(args) -> int:
    out = _check_format(args.out)
    spec = system_spec(args, required=False)
    if (spec is None) == (args.sampler is None):
        raise CLIError("export needs the samples' system: give either --sampler FILE or a system (--system, "
                       "--openmm-xml, --ase-structure), not both")
    sampler = load_sampler(args.sampler)[0] if args.sampler is not None else None
    energy = sampler.energy if sampler is not None else build_energy(spec)
    x = read_samples(args.samples, energy)
    written = write_samples(out, x, energy, _element_of(spec, sampler, args.element))
    print(f"wrote {x.shape[0]} configurations to " + ", ".join(map(str, written)))
    return 0


def cmd_mcmc(args) -> int:
    from iwsm_md.mcmc import sample_reference

    out = _check_format(args.out)
    spec = system_spec(args)
    if args.n < 1 or args.chains < 1:
        raise CLIError(f"-n and --chains must be positive, got {args.n} and {args.chains}")
    temperatures = None
    if args.temperatures:
        try:
            temperatures = [float(t) for t in args.temperatures.split(",")]
        except ValueError:
            raise CLIError(f"--temperatures must be comma-separated numbers starting at 1, got {args.temperatures!r}") from None
    energy = build_energy(spec)
    try:
        result = sample_reference(energy, args.n, chains=args.chains, method=args.method, burn_in=args.burn_in,
                                  pilot=args.pilot, step_size=args.step_size, single_particle=args.single_particle,
                                  temperatures=temperatures, init_scale=args.init_scale, seed=args.seed)
    except RuntimeError as err:  # e.g. chains that never moved: a start or step size that does not fit
        raise CLIError(f"MCMC failed: {err}; try another --init-scale or --step-size, or a longer --burn-in "
                       "(an energy with no confining term lets particles drift apart)") from err
    extra = {k: getattr(result, k) for k in ("autocorrelation_time", "n_effective", "acceptance", "thin",
                                               "burn_in", "wall_seconds")}
    written = write_samples(out, result.samples, energy, _element_of(spec, None, args.element),
                            energies=result.energies.double().cpu().numpy(),
                            extra={**extra, "method": result.method})
    unit = "sweeps" if result.method == "metropolis-single" else "steps"
    print(f"{result.method}: {args.n} samples from {result.chains} chains, thinned every {result.thin} {unit}; "
          f"tau = {result.autocorrelation_time:.3g} {unit}, n_effective = {result.n_effective:.0f}, "
          f"acceptance = {result.acceptance:.2f}, {result.wall_seconds:.1f} s")
    print("wrote " + ", ".join(map(str, written)))
    return 0


# ---------------------------------------------------------------------------------------------
# parser


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "training settings",
        "Every TrainConfig field, as --key VALUE or --set key=VALUE (TOML literals; later flags win over "
        "earlier ones and over --config). Built-in systems start from their published settings "
        "(TrainConfig.published), other systems from the defaults shown.")
    g.add_argument("--config", metavar="FILE.toml", help="TrainConfig keys, flat or in a [train] table")
    g.add_argument("--set", action=_Override, dest="overrides", metavar="KEY=VALUE",
                   help="set one TrainConfig field, e.g. --set n_mc=50 --set mode=\"idem\" (repeatable)")
    from iwsm_md.training import LOSS_WEIGHTS, MODES, NETS

    choices = {"mode": MODES, "net": NETS, "loss_weight": tuple(LOSS_WEIGHTS), "snis_normalise": ("group", "batch")}
    hints = typing.get_type_hints(TrainConfig)
    meta = {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}
    for name, f in _config_fields().items():
        args = [a for a in (typing.get_args(hints[name]) or (hints[name],)) if a is not type(None)]
        metavar = "|".join(meta.get(a, "VALUE") for a in args) + ("|none" if len(args) < len(typing.get_args(hints[name])) else "")
        default = "(required)" if f.default is dataclasses.MISSING else "none" if f.default is None else _toml_literal(f.default)
        help_ = f"one of {', '.join(choices[name])}; " if name in choices else ""
        visible = [(f"--{name.replace('_', '-')}", f"{help_}default {default}")]
        hidden = [(f"--{name}", argparse.SUPPRESS)] if "_" in name else []  # the field's own spelling
        for option, text in visible + hidden:
            try:
                g.add_argument(option, action=_Override, dest="overrides", key=name, metavar=metavar, help=text)
            except argparse.ArgumentError:  # named like another option: still settable with --set
                pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Diffusion samplers of Boltzmann distributions trained with "
                     "Importance Weighted Score Matching, from OpenMM and ASE systems.",
                     epilog=f"Run '{PROG} COMMAND --help' for the options of each command.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    fmt = ", ".join(SAMPLE_FORMATS)

    p = sub.add_parser("train", help="train a sampler of a system", description=(
        "Train a sampler. Writes DIR/checkpoint.pt during training (atomically), then DIR/sampler.pt, "
        "DIR/config.toml (the resolved settings), DIR/history.json and DIR/training.png."))
    _add_system_options(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<system name>)")
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                   help="gradient steps between checkpoints (default 100)")
    p.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.pt (its settings are the base; raise --epochs to train longer)")
    p.add_argument("--force", action="store_true", help="start over in a DIR that already holds a run")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bar with loss and ESS (default on)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings as TOML and exit")
    _add_config_options(p)
    p.set_defaults(func=cmd_train, overrides=None)

    p = sub.add_parser("sample", help="draw samples from a trained sampler", description=(
        f"Draw samples from a trained sampler and write them ({fmt}; .npy raw, .npz and .extxyz "
        "with energies E/kT, .dcd with a companion .pdb topology)."))
    p.add_argument("--sampler", required=True, metavar="FILE", help="sampler.pt (or its run directory)")
    p.add_argument("-n", type=int, required=True, metavar="N", help="number of samples")
    p.add_argument("--steps", type=int, metavar="N", help="integration steps (default: the config's sample_steps)")
    p.add_argument("--method", choices=("sde", "ode"), default="sde", help="reverse SDE or probability-flow ODE (default sde)")
    p.add_argument("--seed", type=int, help="seed of the prior draw and the noise")
    p.add_argument("--element", metavar="SYMBOL[,SYMBOL...]", help="element(s) in trajectory files (default: the ASE structure's, else Ar)")
    p.add_argument("--out", required=True, metavar="FILE", help=f"output file: {fmt}")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="score samples against a reference set", description=(
        "Score samples with the metrics protocol (W1, W2, E-TVD, D-TVD or S-TVD; particle systems centred), "
        "print the table and write DIR/metrics.json, energy.png and pair_distances.png + rdf.png (particle "
        "systems) or samples.png (2-D targets)."))
    p.add_argument("--sampler", metavar="FILE", help="sampler.pt (or its run directory); draws the samples unless --samples")
    p.add_argument("--samples", metavar="FILE", help=f"samples to score instead ({fmt}); needs --sampler or a system")
    p.add_argument("--reference", metavar="FILE", help="reference samples (.npy, .npz from 'iwsm-md mcmc', or a "
                   "trajectory); optional for targets with exact samples (GMMs)")
    p.add_argument("-n", type=int, metavar="N", help=f"configurations compared, each side (default {PARTICLE_PROTOCOL_N} "
                   "or fewer if fewer are given; random rows of larger sets)")
    p.add_argument("--steps", type=int, metavar="N", help="integration steps when drawing from the sampler")
    p.add_argument("--method", choices=("sde", "ode"), default="sde", help="sampling method (default sde)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: <sampler's run directory>/evaluation)")
    _add_system_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="convert samples of a system between formats", description=(
        f"Convert samples of a system to another format ({fmt}); energies are computed for .npz and .extxyz."))
    p.add_argument("--samples", required=True, metavar="FILE", help=f"input samples ({fmt})")
    p.add_argument("--sampler", metavar="FILE", help="take the system from this sampler instead of the system options")
    p.add_argument("--element", metavar="SYMBOL[,SYMBOL...]", help="element(s) in trajectory files (default: the ASE structure's, else Ar)")
    p.add_argument("--out", required=True, metavar="FILE", help=f"output file: {fmt}")
    _add_system_options(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("mcmc", help="reference samples by MCMC", description=(
        "Reference samples by batched MCMC (burn-in, pilot run, thinning by the measured energy "
        "autocorrelation time τ); prints τ and the effective sample size. .npz keeps samples, energies "
        "and the diagnostics."))
    _add_system_options(p)
    p.add_argument("-n", type=int, required=True, metavar="N", help="number of samples")
    p.add_argument("--chains", type=int, default=256, help="parallel chains (default 256)")
    p.add_argument("--method", choices=("metropolis", "mala"), default="metropolis", help="default metropolis")
    p.add_argument("--single-particle", action=argparse.BooleanOptionalAction, default=None,
                   help="single-particle Metropolis moves (default: on for particle systems)")
    p.add_argument("--burn-in", type=int, default=1000, metavar="STEPS", help="steps discarded, step size adapted (default 1000)")
    p.add_argument("--pilot", type=int, metavar="STEPS", help="steps measuring τ (default: --burn-in)")
    p.add_argument("--step-size", type=float, metavar="LENGTH", help="initial step size (default 0.1, MALA 0.01)")
    p.add_argument("--temperatures", metavar="1,T2,...", help="parallel-tempering ladder (kT units)")
    p.add_argument("--init-scale", type=float, default=1.0, help="scale of the random starting positions (default 1)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--element", metavar="SYMBOL[,SYMBOL...]", help="element(s) in trajectory files")
    p.add_argument("--out", required=True, metavar="FILE", help=f"output file: {fmt} (default choice: .npz)")
    p.set_defaults(func=cmd_mcmc)
    return parser


def _version() -> str:
    from iwsm_md import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on `argv` (default `sys.argv[1:]`); returns the exit status
    (0 success, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("IWSM_MD_DEBUG", "") not in ("", "0")
    prefix = PROG
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        prefix = f"{PROG} {args.command}"
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, category, *a, **k: print(
                f"{PROG}: warning: {message}", file=sys.stderr)
            return args.func(args)
    except SystemExit as exit_:  # --help, --version
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted" + ("; continue a training run with --resume" if prefix.endswith("train") else ""),
              file=sys.stderr)
        return 130
    except Exception as err:
        from iwsm_md.energies.check import TranslationMismatch

        if debug or not isinstance(err, (CLIError, ValueError, OSError, TranslationMismatch)):
            raise
        print(f"{prefix}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
