"""Batched energies of small groups of points: external fields, angles, torsions, compound and
centroid bonds.

A `BondedTerm` sums an expression over bonds; bond b joins the points `points[b, 0..k-1]`,
which are particles or, for centroid bonds, weighted centroids of particle groups. The
expression may use the coordinates `x1, y1, z1, ..., xk, yk, zk` of its points and the
geometry calls `distance(p1, p2)`, `angle(p1, p2, p3)` (the angle at p2, radians) and
`dihedral(p1, p2, p3, p4)` (radians, in (−π, π], IUPAC sign), plus per-bond parameters.
Forces come from autograd through the torch evaluation.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from iwsm_md.energies import expression as ex


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return torch.linalg.cross(a, b, dim=-1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _norm(a: Tensor) -> Tensor:
    # clamped, so that a zero vector (coincident points, a straight angle) has gradient zero, as
    # OpenMM's forces there, not NaN; the norm moves by at most sqrt(tiny) (1e-154 in float64)
    return torch.sqrt(_dot(a, a).clamp_min(torch.finfo(a.dtype).tiny))


def distance(p1: Tensor, p2: Tensor) -> Tensor:
    """|p1 − p2| for points `(..., 3)`."""
    return _norm(p1 - p2)


def angle(p1: Tensor, p2: Tensor, p3: Tensor) -> Tensor:
    """Angle p1-p2-p3 at p2 in radians, for points `(..., 3)`."""
    u, v = p1 - p2, p3 - p2
    return torch.atan2(_norm(_cross(u, v)), _dot(u, v))


def dihedral(p1: Tensor, p2: Tensor, p3: Tensor, p4: Tensor) -> Tensor:
    """Dihedral angle p1-p2-p3-p4 in radians, in (−π, π], for points `(..., 3)`."""
    b1, b2, b3 = p2 - p1, p3 - p2, p4 - p3
    n1, n2 = _cross(b1, b2), _cross(b2, b3)
    return torch.atan2(_dot(_cross(n1, n2), b2) / _norm(b2), _dot(n1, n2))


_GEOMETRY = {"distance": distance, "angle": angle, "dihedral": dihedral}


class BondedTerm(nn.Module):
    """`scale · Σ_b f(points of bond b; params of bond b)` in kT.

    Args:
        energy: expression (constants substituted for global parameters) over `x1..zk`,
            geometry calls on `p1..pk` and per-bond parameters.
        points: integer array `(n_bonds, k)` indexing sites: particles, or the rows of
            `centroid_weights` when given.
        per_bond: name -> array `(n_bonds,)`.
        scale: multiplies the sum (unit conversion to kT).
        centroid_weights: optional `(n_groups, n_particles)` array; site g is then
            `Σ_i w_gi x_i` (rows normalised by the caller).
    """

    def __init__(
        self,
        energy: ex.Node,
        points: np.ndarray,
        per_bond: dict[str, np.ndarray] | None = None,
        scale: float = 1.0,
        centroid_weights: np.ndarray | None = None,
    ):
        super().__init__()
        points = np.asarray(points, dtype=np.int64)
        if points.ndim != 2:
            raise ValueError(f"points must have shape (n_bonds, k), got {points.shape}")
        self.k = points.shape[1]
        per_bond = dict(per_bond or {})
        coords = {f"{c}{m}" for m in range(1, self.k + 1) for c in "xyz"}
        calls = ex.geometry_calls(energy)
        point_names = {f"p{m}" for m in range(1, self.k + 1)}
        for call in calls:
            if not all(isinstance(a, ex.Var) and a.name in point_names for a in call.args):
                raise ex.ExpressionError(f"{call!r}: arguments must be point names p1..p{self.k}")
        unknown = ex.variables(energy) - coords - point_names - set(per_bond)
        if unknown:
            raise ex.ExpressionError(f"bonded energy uses unknown variables {sorted(unknown)}")
        self.energy_expr = energy
        self.calls = calls
        self.constant = not calls and not (ex.variables(energy) & coords)
        self.scale = float(scale)
        self.register_buffer("points", torch.as_tensor(points), persistent=False)
        self.param_names = sorted(per_bond)
        for k, v in per_bond.items():
            self.register_buffer(f"param_{k}", torch.as_tensor(np.asarray(v, dtype=np.float64)), persistent=False)
        self.has_centroids = centroid_weights is not None
        if self.has_centroids:
            self.register_buffer("weights", torch.as_tensor(np.asarray(centroid_weights, dtype=np.float64)),
                                 persistent=False)

    def forward(self, pos: Tensor) -> Tensor:
        """Energies `(batch,)` in kT of positions `(batch, N, D)`."""
        if self.points.shape[0] == 0:
            return 0.0 * pos.sum((1, 2))  # zeros that autograd can differentiate (to zero)
        if pos.shape[-1] < 3:  # planar systems: the third coordinates are zero
            pos = torch.nn.functional.pad(pos, (0, 3 - pos.shape[-1]))
        sites = torch.einsum("gn,bnd->bgd", self.weights.to(pos), pos) if self.has_centroids else pos
        pts = sites[:, self.points.to(pos.device)]  # (batch, n_bonds, k, 3)
        env: dict = {k: getattr(self, f"param_{k}").to(pos) for k in self.param_names}
        for m in range(self.k):
            for c, axis in zip("xyz", range(3)):
                env[f"{c}{m + 1}"] = pts[:, :, m, axis]
        for call in self.calls:
            args = [pts[:, :, int(a.name[1:]) - 1] for a in call.args]
            env[call] = _GEOMETRY[call.name](*args)
        e = ex.evaluate(self.energy_expr, env)
        e = torch.broadcast_to(torch.as_tensor(e, dtype=pos.dtype, device=pos.device), pts.shape[:2])
        if self.constant:  # keep the graph: the gradient of a constant is zero, not missing
            e = e + 0.0 * pts.sum((-2, -1))
        return e.sum(-1) * self.scale
