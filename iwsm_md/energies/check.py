"""Self-checks of translated energies against the program they were translated from."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

# Relative agreement required of every translated force or calculator (float64).
CHECK_TOLERANCE = 1e-10


class TranslationMismatch(RuntimeError):
    """A translated energy disagrees with the program it was translated from."""


def compare_terms(
    name: str,
    terms: Sequence[nn.Module],
    positions: np.ndarray,
    energies: np.ndarray,
    forces: np.ndarray,
    kT: float,
    reference: str,
) -> float:
    """Max relative error of translated terms against reference energies and forces.

    Args:
        name: what is compared, for the error message.
        terms: modules mapping `(count, n, d)` positions to `(count,)` energies in kT.
        positions: `(count, n, d)` float64, in the length unit of the terms.
        energies: `(count,)` reference energies in the reference's energy unit.
        forces: `(count, n, d)` reference forces in energy unit per length unit.
        kT: the reference's energy unit per kT.
        reference: the reference's name, for the error message.

    The error of energies is relative to max(|E|, 1) and of forces to max(max|F|, 1), in the
    reference's units. Raises `TranslationMismatch` above `CHECK_TOLERANCE`.
    """
    pos = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    e = sum(term(pos) for term in terms) * kT
    (grad,) = torch.autograd.grad(e.sum(), pos)
    e = e.detach().numpy()
    e_err = np.abs(e - energies) / np.maximum(np.abs(energies), 1.0)
    f_err = np.abs(-grad.numpy() - forces).max() / max(np.abs(forces).max(), 1.0)
    err = float(np.max([e_err.max(), f_err]))  # NaN anywhere fails the check
    if not err <= CHECK_TOLERANCE:
        raise TranslationMismatch(
            f"{name}: the translated energy disagrees with {reference} (relative error {err:.3g} > "
            f"{CHECK_TOLERANCE:g}; energies {e} vs {energies}). Please report this; pass check=False "
            "to skip the check at your own risk")
    return err
