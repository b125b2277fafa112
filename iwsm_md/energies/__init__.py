"""Energies in kT of batched configurations: the `Energy` contract and its adapters.

* `Energy`: `(batch, n_particles*spatial_dim)` positions -> `(batch,)` E/kT, differentiable.
* `from_openmm(system, temperature)`: an OpenMM System, translated to torch kernels.
* `from_ase(atoms, temperature)`: an ASE Atoms with a calculator, translated where possible.
* `from_function(fn, ...)`: a plain torch function of the positions.
"""
from iwsm_md.energies.ase_atoms import from_ase
from iwsm_md.energies.ase_calculators import HarmonicCentroidRestraint
from iwsm_md.energies.base import Energy, FunctionEnergy, TermEnergy, from_function
from iwsm_md.energies.check import TranslationMismatch
from iwsm_md.energies.openmm_system import TranslationReport, from_openmm

__all__ = [
    "Energy",
    "FunctionEnergy",
    "HarmonicCentroidRestraint",
    "TermEnergy",
    "TranslationMismatch",
    "TranslationReport",
    "from_ase",
    "from_function",
    "from_openmm",
]
