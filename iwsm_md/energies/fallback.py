"""Exact fallback terms: energies we cannot translate to torch, evaluated by their own engine.

A fallback term is an energy *term* (see `iwsm_md.energies.base`): `forward(pos)` takes
positions of shape `(batch, n_particles, spatial_dim)` and returns `(batch,)` reduced energies
E/kT. Each configuration is handed to OpenMM (`OpenMMFallbackTerm`, Reference platform, double
precision) or to an ASE calculator (`ASEFallbackTerm`) one at a time; forces come back with the
energies and feed autograd through `_ExternalEnergy`. This is exact but orders of magnitude
slower than the translated torch kernels, so constructing a term warns once.

Faults: a configuration whose energy or forces are not finite, or whose evaluation raises the
engine's error, gets energy +inf and forces 0. Each call with faults warns (RuntimeWarning);
the cumulative counts are kept in `n_nonfinite` and `n_errors`.
"""
from __future__ import annotations

import multiprocessing
import os
import warnings
import weakref
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import openmm
import torch
from torch import Tensor, nn

__all__ = ["ASEFallbackTerm", "OpenMMFallbackTerm"]

RowFn = Callable[[np.ndarray], tuple[float, np.ndarray]]


class _ExternalEnergy(torch.autograd.Function):
    """E/kT of `pos` `(batch, N, D)` from `evaluator.evaluate`; backward uses its forces.

    `evaluator.evaluate(pos)` takes a float64 numpy array `(batch, N, D)` and returns energies
    `(batch,)` in kT and forces `(batch, N, D)` in kT per length unit.
    """

    @staticmethod
    def forward(ctx, pos: Tensor, evaluator) -> Tensor:
        pos64 = pos.detach().to(device="cpu", dtype=torch.float64).numpy()
        energy, forces = evaluator.evaluate(pos64)
        if ctx.needs_input_grad[0]:
            ctx.forces = torch.from_numpy(forces)
        return torch.from_numpy(energy).to(device=pos.device, dtype=pos.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor):
        forces = ctx.forces.to(device=grad_output.device, dtype=grad_output.dtype)
        return -forces * grad_output[:, None, None], None


@dataclass
class _Faults:
    """Faulty configurations of one evaluation: non-finite results, raised errors, first message."""

    n_nonfinite: int = 0
    n_errors: int = 0
    first_error: str | None = None

    def __iadd__(self, other: _Faults) -> _Faults:
        self.n_nonfinite += other.n_nonfinite
        self.n_errors += other.n_errors
        self.first_error = self.first_error or other.first_error
        return self


def _evaluate_rows(row_fn: RowFn, pos: np.ndarray, errors: tuple[type[BaseException], ...]):
    """Apply `row_fn` (one configuration -> energy, forces) to every row of `pos` `(batch, N, D)`.

    A row that raises one of `errors`, or returns a non-finite energy or force, gets energy +inf
    and forces 0. Returns energies `(batch,)`, forces `(batch, N, D)` and the `_Faults`.
    """
    energy = np.empty(pos.shape[0])
    forces = np.zeros(pos.shape)
    faults = _Faults()
    for i, row in enumerate(pos):
        try:
            e, f = row_fn(row)
        except errors as exc:
            faults.n_errors += 1
            faults.first_error = faults.first_error or f"{type(exc).__name__}: {exc}"
            energy[i] = np.inf
            continue
        if np.isfinite(e) and np.isfinite(f).all():
            energy[i], forces[i] = e, f
        else:
            faults.n_nonfinite += 1
            energy[i] = np.inf
    return energy, forces, faults


class _FallbackTerm(nn.Module):
    """Shared part of the fallback terms: shape check, autograd, fault bookkeeping and warnings.

    Subclasses set `n_particles`, `spatial_dim` and implement `_evaluate(pos)` returning
    `(energy, forces, _Faults)` for a float64 numpy `pos` `(batch, N, D)`.
    """

    def __init__(self, n_particles: int, spatial_dim: int, kT: float):
        super().__init__()
        if not kT > 0:
            raise ValueError(f"kT must be positive, got {kT}")
        self.n_particles = int(n_particles)
        self.spatial_dim = int(spatial_dim)
        self.kT = float(kT)
        self.n_evaluated = 0
        self.n_nonfinite = 0
        self.n_errors = 0

    def forward(self, pos: Tensor) -> Tensor:
        """E/kT `(batch,)` of positions `pos` `(batch, n_particles, spatial_dim)`."""
        expected = (self.n_particles, self.spatial_dim)
        if pos.ndim != 3 or tuple(pos.shape[1:]) != expected:
            raise ValueError(
                f"positions must have shape (batch, {expected[0]}, {expected[1]}), got {tuple(pos.shape)}"
            )
        return _ExternalEnergy.apply(pos, self)

    def evaluate(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies `(batch,)` in kT and forces `(batch, N, D)` in kT per length unit of float64 `pos`.

        Faulty configurations get +inf and zero forces, are counted, and raise one RuntimeWarning.
        """
        energy, forces, faults = self._evaluate(pos)
        self.n_evaluated += len(pos)
        self.n_nonfinite += faults.n_nonfinite
        self.n_errors += faults.n_errors
        n_bad = faults.n_nonfinite + faults.n_errors
        if n_bad:
            detail = f"; first error: {faults.first_error}" if faults.first_error else ""
            warnings.warn(
                f"{type(self).__name__}: {n_bad} of {len(pos)} configurations failed "
                f"({faults.n_nonfinite} non-finite, {faults.n_errors} raised) and were given energy "
                f"+inf and zero forces{detail}",
                RuntimeWarning,
                stacklevel=2,
            )
        return energy, forces

    def _evaluate(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, _Faults]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"n_particles={self.n_particles}, spatial_dim={self.spatial_dim}, kT={self.kT}"


# ----------------------------------------------------------------------------------- OpenMM


class _OpenMMEvaluator:
    """Per-configuration OpenMM Reference evaluation of a serialized System; picklable.

    Positions in nm (spatial_dim 2 is padded with z = 0); returns E/kT and forces in kT/nm.
    The Context is built lazily and is not pickled.
    """

    def __init__(self, system_xml: str, kT: float, spatial_dim: int):
        self.system_xml = system_xml
        self.kT = kT
        self.spatial_dim = spatial_dim
        self._context: openmm.Context | None = None

    def __getstate__(self):
        return {**self.__dict__, "_context": None}

    @property
    def context(self) -> openmm.Context:
        """This process's Reference-platform Context of the System, built on first use."""
        if self._context is None:
            system = openmm.XmlSerializer.deserialize(self.system_xml)
            platform = openmm.Platform.getPlatformByName("Reference")
            self._context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform)
        return self._context

    def _row(self, pos: np.ndarray) -> tuple[float, np.ndarray]:
        if self.spatial_dim == 2:
            pos = np.concatenate([pos, np.zeros((len(pos), 1))], axis=1)
        context = self.context
        context.setPositions(pos)
        state = context.getState(getEnergy=True, getForces=True)
        # OpenMM reports kJ/mol and kJ/mol/nm. The forces are read as State.getForces(asNumpy=True)
        # does internally, minus its unit bookkeeping, which costs a quarter of the time per call.
        forces = np.empty((len(pos), 3))
        state._getVectorAsNumpy(openmm.State.Forces, forces)
        energy = state.getPotentialEnergy()._value / self.kT
        return energy, forces[:, : self.spatial_dim] / self.kT

    def __call__(self, pos: np.ndarray):
        """Energies, forces and `_Faults` of float64 positions `(batch, N, spatial_dim)`."""
        return _evaluate_rows(self._row, pos, (openmm.OpenMMException,))


# Set only inside pool worker processes, by `_init_worker`: each worker's own evaluator.
_worker_evaluator: _OpenMMEvaluator | None = None


def _init_worker(evaluator: _OpenMMEvaluator) -> None:
    """Pool initializer: keep this worker's evaluator and build its Context once."""
    global _worker_evaluator
    _worker_evaluator = evaluator
    evaluator.context


def _evaluate_in_worker(pos: np.ndarray):
    return _worker_evaluator(pos)


def _shutdown(pool: ProcessPoolExecutor) -> None:
    pool.shutdown(wait=True, cancel_futures=True)


class OpenMMFallbackTerm(_FallbackTerm):
    """Exact E/kT of the forces of an OpenMM System, one configuration at a time (Reference platform).

    Args:
        system: an `openmm.System` holding only the forces that must go through OpenMM.
        kT: thermal energy in kJ/mol.
        spatial_dim: 2 or 3; in 2D particles lie in the z = 0 plane.
        force_names: names of the forces in `system`, for the construction warning.
        n_workers: processes for large batches (default `os.cpu_count()`); 1 keeps all work
            in this process.

    `forward(pos)`: `pos` `(batch, n_particles, spatial_dim)` in nm -> `(batch,)` E/kT; the
    gradient uses OpenMM's forces (kJ/mol/nm / kT). Batches of at least `pool_threshold`
    configurations are split over a 'spawn' process pool started on first use; `close()`
    shuts it down. Pickling and deepcopy keep the System (as XML) and drop pool and Contexts.
    """

    pool_threshold = 256

    def __init__(
        self,
        system: openmm.System,
        kT: float,
        spatial_dim: int,
        force_names: list[str],
        n_workers: int | None = None,
    ):
        if spatial_dim not in (2, 3):
            raise ValueError(f"spatial_dim must be 2 or 3, got {spatial_dim}")
        super().__init__(system.getNumParticles(), spatial_dim, kT)
        self.force_names = list(force_names)
        self.n_workers = max(1, int(n_workers or os.cpu_count() or 1))
        self._evaluator = _OpenMMEvaluator(openmm.XmlSerializer.serialize(system), self.kT, self.spatial_dim)
        self._pool: ProcessPoolExecutor | None = None
        self._finalizer: weakref.finalize | None = None
        warnings.warn(
            f"OpenMM forces {', '.join(self.force_names)} go through the per-configuration OpenMM fallback "
            "(Reference platform, one configuration at a time), which is orders of magnitude slower "
            "than the translated torch kernels (~10k configurations/s of 13 particles on 2 CPU cores)",
            UserWarning,
            stacklevel=2,
        )

    def _evaluate(self, pos: np.ndarray):
        if self.n_workers == 1 or len(pos) < self.pool_threshold:
            return self._evaluator(pos)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.n_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self._evaluator,),
            )
            self._finalizer = weakref.finalize(self, _shutdown, self._pool)
        chunks = np.array_split(pos, self.n_workers)
        energies, forces, faults = [], [], _Faults()
        for e, f, fl in self._pool.map(_evaluate_in_worker, chunks):
            energies.append(e)
            forces.append(f)
            faults += fl
        return np.concatenate(energies), np.concatenate(forces), faults

    def close(self) -> None:
        """Shut down the worker pool, if any; a later large batch starts a new one."""
        if self._finalizer is not None:
            self._finalizer()
        self._pool = self._finalizer = None

    def __getstate__(self):
        return {**self.__dict__, "_pool": None, "_finalizer": None}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, forces={self.force_names}, n_workers={self.n_workers}"


# -------------------------------------------------------------------------------------- ASE


class ASEFallbackTerm(_FallbackTerm):
    """Exact E/kT of an ASE calculator, one configuration at a time, in this process.

    Args:
        atoms: `ase.Atoms` with its calculator attached (`atoms.calc`); a private copy sharing
            that calculator is evaluated.
        kT: thermal energy in eV.
        calculator_name: name of the calculator, for the construction warning.

    `forward(pos)`: `pos` `(batch, len(atoms), 3)` in Å -> `(batch,)` E/kT; the gradient uses
    the calculator's forces (eV/Å / kT). Any exception raised by the calculator counts as a
    fault (energy +inf, zero forces).
    """

    def __init__(self, atoms, kT: float, calculator_name: str):
        super().__init__(len(atoms), 3, kT)
        if atoms.calc is None:
            raise ValueError("atoms has no calculator attached (atoms.calc is None)")
        self.calculator_name = calculator_name
        self.atoms = atoms.copy()
        self.atoms.calc = atoms.calc
        warnings.warn(
            f"the ASE calculator {calculator_name!r} goes through the per-configuration ASE fallback, "
            "which is orders of magnitude slower than the translated torch kernels "
            "(~0.2-0.5k configurations/s)",
            UserWarning,
            stacklevel=2,
        )

    def _row(self, pos: np.ndarray) -> tuple[float, np.ndarray]:
        self.atoms.set_positions(pos, apply_constraint=False)  # the energy of exactly these positions
        energy = self.atoms.get_potential_energy() / self.kT
        return energy, self.atoms.get_forces(apply_constraint=False) / self.kT

    def _evaluate(self, pos: np.ndarray):
        return _evaluate_rows(self._row, pos, (Exception,))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, calculator={self.calculator_name!r}"
