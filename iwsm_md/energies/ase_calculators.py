"""ASE calculators that the benchmark systems need and ASE lacks."""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes


class HarmonicCentroidRestraint(Calculator):
    """Harmonic restraint of every atom to the centroid: `E = 0.5 k Σ_i |x_i − x̄|²`.

    `x̄` is the plain (unweighted) mean of the positions, `k` in eV/Å² (default 1.0). Energy in
    eV; forces `−k (x_i − x̄)` in eV/Å, shape `(n_atoms, 3)` (the centroid's own dependence on
    x_i cancels because Σ_i (x_i − x̄) = 0). Periodic boundaries are ignored.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    default_parameters = {"k": 1.0}
    nolabel = True

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties or ["energy"], system_changes)
        k = float(self.parameters.k)
        dx = self.atoms.positions - self.atoms.positions.mean(axis=0)
        energy = 0.5 * k * float(np.sum(dx * dx))
        self.results = {"energy": energy, "free_energy": energy, "forces": -k * dx}
