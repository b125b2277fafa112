"""Temperatures and kT at the boundary with OpenMM (kJ/mol) and ASE (eV)."""
from __future__ import annotations

import math

import openmm.unit as unit
from ase.units import kB as _KB_EV

# R in kJ/(mol K), as OpenMM defines it
MOLAR_GAS_CONSTANT = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
# Boltzmann's constant in eV/K, as ASE defines it
BOLTZMANN_EV = _KB_EV


def kelvin(temperature) -> float:
    """Temperature as a float in kelvin, from an openmm Quantity or a number (kelvin).

    Raises TypeError for None (no temperature is ever assumed) and ValueError for a
    non-temperature unit or a non-positive or non-finite value.
    """
    if temperature is None:
        raise TypeError("temperature is required (kelvin, or an openmm.unit Quantity): the energy is "
                        "returned in units of kT and no temperature is assumed")
    if unit.is_quantity(temperature):
        if not temperature.unit.is_compatible(unit.kelvin):
            raise ValueError(f"temperature has unit {temperature.unit}, expected a temperature")
        temperature = temperature.value_in_unit(unit.kelvin)
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be positive and finite (kelvin), got {t}")
    return t
