"""Builders of the benchmark systems: real OpenMM `System`s, ASE `Atoms`, and the GMM energy."""
from iwsm_md.potentials.ase_atoms import ASE_REDUCED_TEMPERATURE, lj_cluster_atoms
from iwsm_md.potentials.builtin import BUILTIN, builtin_energy
from iwsm_md.potentials.gmm import GMMEnergy, gmm
from iwsm_md.potentials.openmm_systems import REDUCED_TEMPERATURE, double_well, lj_cluster

__all__ = [
    "BUILTIN",
    "builtin_energy",
    "REDUCED_TEMPERATURE",
    "ASE_REDUCED_TEMPERATURE",
    "lj_cluster",
    "double_well",
    "lj_cluster_atoms",
    "gmm",
    "GMMEnergy",
]
