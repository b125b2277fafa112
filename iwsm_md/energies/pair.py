"""Batched pair potentials `Σ_pairs f(r_ij; params)` with analytic forces.

The energy of a pair is an expression in `r` (see `expression`); its derivative is taken
symbolically once, at construction. Two kernels share it:

* dense, for pair sets that fill much of the N×N matrix (clusters, nonbonded forces):
  squared distances from the Gram matrix of each configuration, gathered at the pairs;
  forces as one batched matmul, `dE/dx_i = Σ_j c_ij (x_i − x_j)` with `c_ij = f'(r_ij)/r_ij`;
* sparse, for short pair lists (bonds, exceptions): gather, evaluate, scatter-add.

The expression is evaluated in u = r² and only at the listed pairs. Both kernels run in chunks of the batch sized to stay in cache, and are wrapped in an autograd
Function whose backward returns the analytic gradient.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from iwsm_md.energies import expression as ex

# elements of the (chunk, N, N) or (chunk, P) working arrays per chunk
_CHUNK_ELEMENTS = 3 << 18
# below this fill fraction of the upper triangle a pair list is evaluated sparsely
_DENSE_FILL = 0.25
# the squared distance, by a name no parameter can take (OpenMM names are identifiers)
_U = "<r^2>"


class PairTerm(nn.Module):
    """`scale · Σ_{(i,j) in pairs} f(r_ij; params)`: a pair potential in kT.

    Args:
        energy: expression in `r` (distance in the energy's length unit), with per-pair
            parameters, per-particle parameters `name1`/`name2`, and constants already
            substituted for global parameters.
        n_particles: N.
        pairs: integer array `(P, 2)` of particle indices; None means every pair i < j.
        per_pair: name -> array `(P,)` of per-pair parameter values (needs `pairs`).
        per_particle: name -> array `(N,)`; the expression refers to `name1`, `name2`.
        scale: multiplies the sum (unit conversion to kT).
    """

    def __init__(
        self,
        energy: ex.Node,
        n_particles: int,
        pairs: np.ndarray | None = None,
        per_pair: dict[str, np.ndarray] | None = None,
        per_particle: dict[str, np.ndarray] | None = None,
        scale: float = 1.0,
    ):
        super().__init__()
        per_pair = dict(per_pair or {})
        per_particle = dict(per_particle or {})
        n = int(n_particles)
        if pairs is None:
            if per_pair:
                raise ValueError("per-pair parameters need an explicit pair list")
            pairs = np.stack(np.triu_indices(n, 1), axis=1)
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if len(pairs) and (pairs.min() < 0 or pairs.max() >= n or np.any(pairs[:, 0] == pairs[:, 1])):
            raise ValueError("pair indices must be distinct particles in [0, n_particles)")
        allowed = {"r"} | set(per_pair) | {f"{k}{s}" for k in per_particle for s in "12"}
        unknown = ex.variables(energy) - allowed
        if unknown:
            raise ex.ExpressionError(f"pair energy uses unknown variables {sorted(unknown)}")
        # Work in u = r²: even powers of r need no square root, and the force factor
        # f'(r)/r = 2 df/du needs no division.
        # The scale is folded into the expressions' constants.
        self.energy_expr = ex.op("mul", ex.Const(scale), ex.substitute(energy, {"r": ex.op("sqrt", ex.Var(_U))}))
        self.force_expr = ex.op("mul", ex.Const(2.0), ex.derivative(self.energy_expr, _U))
        self.n_particles = n
        self.n_pairs = len(pairs)
        lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
        unique = len(np.unique(lo * n + hi)) == len(pairs)
        self.dense = unique and len(pairs) >= _DENSE_FILL * n * (n - 1) / 2
        # dense: flat indices of the pairs (and of their transposes) in a row-major N×N matrix
        self.register_buffer("flat", torch.as_tensor(lo * n + hi), persistent=False)
        self.register_buffer("flat_t", torch.as_tensor(hi * n + lo), persistent=False)
        # sparse: the pairs themselves
        self.register_buffer("i", torch.as_tensor(pairs[:, 0]), persistent=False)
        self.register_buffer("j", torch.as_tensor(pairs[:, 1]), persistent=False)
        self.param_names: list[str] = []
        for k, v in per_pair.items():
            self._add_param(k, torch.as_tensor(np.asarray(v, dtype=np.float64)))
        for k, v in per_particle.items():
            col = torch.as_tensor(np.asarray(v, dtype=np.float64))
            self._add_param(f"{k}1", col[pairs[:, 0]])
            self._add_param(f"{k}2", col[pairs[:, 1]])

    def _add_param(self, name: str, value: Tensor) -> None:
        self.register_buffer(f"param_{name}", value, persistent=False)
        self.param_names.append(name)

    def forward(self, pos: Tensor) -> Tensor:
        """Energies `(batch,)` in kT of positions `(batch, N, D)`."""
        if self.n_pairs == 0:
            return 0.0 * pos.sum((1, 2))  # zeros that autograd can differentiate (to zero)
        return _PairEnergy.apply(pos, self)

    def values(self, u: Tensor, params: dict[str, Tensor], with_force: bool) -> tuple[Tensor, Tensor | None]:
        """Scaled pair energies and, if asked, force factors f'(r)/r, at squared distances `u`."""
        cache: dict = {}
        env = {**params, _U: u}
        e = torch.broadcast_to(torch.as_tensor(ex.evaluate(self.energy_expr, env, cache), dtype=u.dtype,
                                               device=u.device), u.shape)
        if not with_force:
            return e, None
        c = ex.evaluate(self.force_expr, env, cache)
        return e, torch.broadcast_to(torch.as_tensor(c, dtype=u.dtype, device=u.device), u.shape)

    def params_like(self, pos: Tensor) -> dict[str, Tensor]:
        return {k: getattr(self, f"param_{k}").to(device=pos.device, dtype=pos.dtype) for k in self.param_names}

    def dense_chunk(self, x: Tensor, params: dict[str, Tensor], with_force: bool):
        """Energies `(b,)` and gradients `(b, N, D)` of one chunk: squared distances from the
        Gram matrix, gathered at the pairs; forces as one batched matmul."""
        b, n = x.shape[:2]
        x = x - x.mean(dim=1, keepdim=True)  # distances are shift invariant; centring cuts f32 cancellation
        sq = (x * x).sum(-1)
        r2 = torch.baddbmm(sq[:, :, None] + sq[:, None, :], x, x.transpose(1, 2), alpha=-2.0)
        flat = self.flat.to(x.device)
        u = r2.reshape(b, n * n).index_select(1, flat).clamp_min(torch.finfo(x.dtype).tiny)
        e, c = self.values(u, params, with_force)
        if not with_force:
            return e.sum(-1), None
        cm = x.new_zeros(b, n * n)
        cm.index_copy_(1, flat, c)
        cm.index_copy_(1, self.flat_t.to(x.device), c)
        cm = cm.view(b, n, n)
        return e.sum(-1), cm.sum(-1, keepdim=True) * x - torch.bmm(cm, x)

    def sparse_chunk(self, x: Tensor, params: dict[str, Tensor], with_force: bool):
        """Energies `(b,)` and gradients `(b, N, D)` of one chunk over the listed pairs."""
        i, j = self.i.to(x.device), self.j.to(x.device)
        d = x[:, i] - x[:, j]
        e, c = self.values((d * d).sum(-1).clamp_min(torch.finfo(x.dtype).tiny), params, with_force)
        energy = e.sum(-1)
        if not with_force:
            return energy, None
        g = c[..., None] * d
        grad = torch.zeros_like(x)
        grad.index_add_(1, i, g)
        grad.index_add_(1, j, -g)
        return energy, grad


def _chunks(pos: Tensor, term: PairTerm, with_force: bool) -> tuple[Tensor, Tensor | None]:
    """Energies `(batch,)` and, if asked, gradients `(batch, N, D)`, a memory-bounded chunk at a time."""
    params = term.params_like(pos)
    width = term.n_particles**2 if term.dense else term.n_pairs
    step = max(1, _CHUNK_ELEMENTS // width)
    kernel = term.dense_chunk if term.dense else term.sparse_chunk
    energies, grads = [], []
    for start in range(0, pos.shape[0], step) or [0]:  # an empty batch is one empty chunk
        e, g = kernel(pos[start:start + step], params, with_force)
        energies.append(e)
        grads.append(g)
    return torch.cat(energies), torch.cat(grads) if with_force else None


class _PairEnergy(torch.autograd.Function):
    """The pair energy with its analytic gradient, computed in the forward pass; under
    `create_graph` the backward recomputes that gradient with recorded operations, so that
    second derivatives (Hessian-vector products) are available too."""

    @staticmethod
    def forward(ctx, pos: Tensor, term: PairTerm) -> Tensor:
        energy, grad = _chunks(pos, term, ctx.needs_input_grad[0])
        if grad is not None:
            ctx.save_for_backward(pos, grad)
            ctx.term = term
        return energy

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pos, grad = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gradient again, differentiably
            grad = _chunks(pos, ctx.term, True)[1]
        return grad_out[:, None, None] * grad, None
