"""The built-in benchmark systems by name, as ready `Energy` objects in kT = 1 units."""
from __future__ import annotations

from iwsm_md.energies.base import Energy

BUILTIN = ("gmm40", "gmm80", "gmm120", "dw4", "lj13", "lj55")


def builtin_energy(name: str) -> Energy:
    """The energy of a built-in system: "gmm40", "gmm80", "gmm120" (2D mixtures), "dw4"
    (4 particles in 2D), "lj13", "lj55" (LJ clusters in 3D); OpenMM-built systems are
    translated with `from_openmm` at the temperature where kT = 1 kJ/mol."""
    from iwsm_md.energies.openmm_system import from_openmm
    from iwsm_md.potentials.gmm import gmm
    from iwsm_md.potentials.openmm_systems import REDUCED_TEMPERATURE, double_well, lj_cluster

    key = name.lower().replace("-", "").replace("_", "")
    if key.startswith("gmm") and key in BUILTIN:
        return gmm(int(key[3:]))
    if key == "dw4":
        return from_openmm(double_well(4), REDUCED_TEMPERATURE, spatial_dim=2)
    if key in ("lj13", "lj55"):
        return from_openmm(lj_cluster(int(key[2:])), REDUCED_TEMPERATURE)
    raise ValueError(f"unknown built-in system {name!r}; built-in systems are {', '.join(BUILTIN)}")
