"""The front door: `train(system=...) -> Sampler` and `load(path) -> Sampler`."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

from iwsm_md.energies.base import Energy
from iwsm_md.training import Sampler, TrainConfig, device_problem, fit, read_state, restore


def _resolve(system, temperature, spatial_dim) -> tuple[Energy, dict | None, str | None]:
    """(energy, source to rebuild it on load, built-in name) of a `system` argument."""
    import ase
    import openmm

    from iwsm_md.energies import from_ase, from_openmm
    from iwsm_md.potentials.builtin import builtin_energy

    if isinstance(system, str):
        if temperature is not None:
            raise ValueError(f"temperature does not apply to the built-in system {system!r} (reduced units, kT = 1): "
                             "drop it")
        return builtin_energy(system), {"kind": "builtin", "name": system}, system
    if isinstance(system, openmm.System):
        energy = from_openmm(system, temperature, spatial_dim)
        return energy, {"kind": "openmm", "xml": openmm.XmlSerializer.serialize(system),
                        "temperature": temperature, "spatial_dim": spatial_dim}, None
    if isinstance(system, ase.Atoms):
        energy = from_ase(system, temperature)
        try:
            source = {"kind": "ase", "atoms": pickle.dumps(system), "temperature": temperature}
        except Exception:  # calculators that cannot be pickled: load() then needs energy=
            source = None
        return energy, source, None
    if isinstance(system, Energy):
        if temperature is not None:
            raise ValueError("temperature does not apply to an Energy, which is already in units of kT: drop it "
                             "(or divide your energy by kT)")
        return system, None, None
    raise TypeError(f"system must be a built-in name, an openmm.System, an ase.Atoms or an iwsm_md Energy, "
                    f"got {type(system).__name__}")


def train(system, *, temperature=None, spatial_dim: int = 3, config: TrainConfig | None = None,
          log: Callable[[dict], None] | None = None, checkpoint: str | Path | None = None,
          checkpoint_every: int = 100, resume: bool = False, **overrides) -> Sampler:
    """Train a sampler of the Boltzmann distribution of `system`.

    Args:
        system: a built-in name ("gmm40", "gmm80", "gmm120", "dw4", "lj13", "lj55"), an
            `openmm.System` (give `temperature`, kelvin, and `spatial_dim`), an `ase.Atoms` with a
            calculator (give `temperature`), or an `iwsm_md.energies.Energy` (already in kT).
        config: a `TrainConfig`; default: the published settings of a built-in system, else
            `TrainConfig()`.
        log: called with each epoch's statistics.
        checkpoint, checkpoint_every, resume: write a training checkpoint every
            `checkpoint_every` gradient steps (atomically) and resume from it (see `training.fit`).
        **overrides: any `TrainConfig` field (unknown keys raise TypeError).

    Returns a `Sampler`; `sampler.sample(n)` gives `(n, dim)` configurations in the system's
    coordinates (nm for OpenMM, Å for ASE).
    """
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be an iwsm_md.TrainConfig, got {type(config).__name__}: pass "
                        "TrainConfig(**settings), or the settings themselves as keywords of train()")
    energy, source, name = _resolve(system, temperature, spatial_dim)
    base = config or (TrainConfig.published(name) if name is not None else TrainConfig())
    config = TrainConfig.with_overrides(base, overrides)
    problem = device_problem(config.device)
    if problem is not None:
        raise ValueError(problem)
    return fit(energy.to(config.device), config, log=log, source=source, checkpoint=checkpoint,
               checkpoint_every=checkpoint_every, resume=resume)


def load(path: str | Path, energy: Energy | None = None) -> Sampler:
    """Load a sampler written by `Sampler.save` / `save`. Samplers of a plain `Energy` need it
    passed as `energy`; others rebuild theirs from the saved system."""
    import openmm

    from iwsm_md.energies import from_ase, from_openmm
    from iwsm_md.potentials.builtin import builtin_energy

    if energy is not None and not isinstance(energy, Energy):
        raise TypeError(f"energy must be an iwsm_md Energy, got {type(energy).__name__}: build one with "
                        "from_openmm, from_ase, from_function or iwsm_md.potentials")
    path = Path(path)
    state = read_state(path)
    source = state["source"]
    if energy is None:
        if source is None:
            raise ValueError(f"{path} was trained on a plain Energy: pass it as load(path, energy=...)")
        if source["kind"] == "builtin":
            energy = builtin_energy(source["name"])
        elif source["kind"] == "openmm":
            energy = from_openmm(openmm.XmlSerializer.deserialize(source["xml"]), source["temperature"],
                                 source["spatial_dim"])
        else:
            energy = from_ase(pickle.loads(source["atoms"]), source["temperature"])
    return restore(state, energy)

