"""An E(3)-equivariant score net for 3D particle systems built with e3nn (NequIP-style
interactions on the fully connected graph).

Features are e3nn irreps (scalars 0e, vectors 1o, ...); messages are tensor products of the
neighbour's features with the spherical harmonics of the relative position, weighted by a
radial MLP of the distance. Every map respects parity, so the net is equivariant to rotations
and reflections, invariant to translations and equivariant to permutations.
"""
from __future__ import annotations

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from torch import Tensor, nn

from iwsm_md.nets.mlp import sinusoidal_embedding
from iwsm_md.sde import remove_com


class Interaction(nn.Module):
    """`h_i ← Linear(Σ_{j≠i} h_j ⊗ Y(r_ij) · R(|r_ij|)) / √(n − 1) + SelfLinear(h_i)`.

    The tensor product is channel-wise ('uvu'): each channel of h_j meets each spherical
    harmonic with its own radial weight; the node-level linear map then mixes channels.
    Only paths that can reach `irreps_out` are kept.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_out: o3.Irreps, n_basis: int, radial_hidden: int):
        super().__init__()
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir in ir_in * ir_sh:
                    if ir in irreps_out:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir))
        irreps_mid, perm, _ = o3.Irreps(mid).sort()
        instructions = [(i, j, perm[k], mode, train) for i, j, k, mode, train in instructions]
        self.tp = o3.TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions,
                                   shared_weights=False, internal_weights=False)
        self.radial = FullyConnectedNet([n_basis, radial_hidden, self.tp.weight_numel], torch.nn.functional.silu)
        self.linear = o3.Linear(irreps_mid.simplify(), irreps_out)
        self.self_connection = o3.Linear(irreps_in, irreps_out)

    def forward(self, h: Tensor, neighbours: Tensor, sh: Tensor, radial: Tensor) -> Tensor:
        """Node features `h` `(batch, n, irreps_in.dim)`, neighbour indices `(n, n−1)`, spherical
        harmonics `(batch, n, n−1, irreps_sh.dim)` and radial basis `(batch, n, n−1, n_basis)`
        -> `(batch, n, irreps_out.dim)`."""
        h_j = h[:, neighbours]  # (batch, n, n−1, irreps_in.dim)
        messages = self.tp(h_j, sh, self.radial(radial))
        aggregated = messages.sum(2) / (neighbours.shape[1] ** 0.5)
        return self.linear(aggregated) + self.self_connection(h)


class E3NNScore(nn.Module):
    """`s_θ(x, t)` for `n_particles` in 3D: e3nn interactions on the fully connected graph.

    Node features start as learned scalars (0e) of the time embedding, identical for every
    particle; `layers − 1` gated interactions map them to `hidden` irreps, and a last
    interaction reads out one vector (1o) per particle: the score, minus its mean over
    particles (centre-of-mass free).

    Args:
        n_particles: particles per configuration.
        spatial_dim: must be 3.
        hidden: irreps of the hidden node features, e.g. "16x0e+8x1o"; needs at least one 0e.
        layers: interactions, the read-out included (>= 1).
        lmax: highest degree of the spherical harmonics of relative positions.
        time_width: width of the sinusoidal time embedding.
        r_max: distances (the sampler's length unit) the radial basis spans: `n_basis` Gaussians
            on [0, r_max]; the features of longer distances fade to zero, so cover the largest
            pair distances at σ_max.
        n_basis: radial basis functions.
        radial_hidden: width of the radial MLP.
    """

    def __init__(self, n_particles: int, spatial_dim: int = 3, hidden: str = "16x0e+8x1o", layers: int = 3,
                 lmax: int = 2, time_width: int = 32, r_max: float = 10.0, n_basis: int = 20, radial_hidden: int = 32):
        super().__init__()
        if spatial_dim != 3:
            raise ValueError(f"E3NNScore works in 3D only (spatial_dim=3), got spatial_dim={spatial_dim}")
        if n_particles < 2 or layers < 1:
            raise ValueError(f"E3NNScore needs n_particles >= 2 and layers >= 1, got {n_particles}, {layers}")
        hidden_irreps = o3.Irreps(hidden).simplify()
        n_scalars = hidden_irreps.count("0e")
        if n_scalars == 0:
            raise ValueError(f"hidden irreps {hidden!r} need at least one 0e scalar to carry the time")
        self.n_particles, self.time_width, self.r_max, self.n_basis = n_particles, time_width, r_max, n_basis
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.time = nn.Sequential(nn.Linear(time_width, n_scalars), nn.SiLU(), nn.Linear(n_scalars, n_scalars))

        interactions, gates = nn.ModuleList(), nn.ModuleList()
        irreps = o3.Irreps(f"{n_scalars}x0e")
        for _ in range(layers - 1):
            gate = _gate(hidden_irreps)
            interactions.append(Interaction(irreps, self.irreps_sh, gate.irreps_in, n_basis, radial_hidden))
            gates.append(gate)
            irreps = gate.irreps_out
        self.interactions, self.gates = interactions, gates
        self.readout = Interaction(irreps, self.irreps_sh, o3.Irreps("1x1o"), n_basis, radial_hidden)

        eye = torch.eye(n_particles, dtype=torch.bool)
        neighbours = torch.arange(n_particles).expand(n_particles, -1)[~eye].reshape(n_particles, n_particles - 1)
        self.register_buffer("neighbours", neighbours, persistent=False)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Scores `(batch, n_particles*3)` (inverse length units) at positions `x`
        `(batch, n_particles*3)` (particle-major, the sampler's length unit) and times `t`
        `(batch,)` in [0, 1]."""
        pos = x.reshape(x.shape[0], self.n_particles, 3)
        r = pos[:, self.neighbours] - pos[:, :, None]  # (batch, n, n−1, 3): x_j − x_i
        sh = o3.spherical_harmonics(self.irreps_sh, r, normalize=True, normalization="component")
        radial = soft_one_hot_linspace(r.norm(dim=-1), 0.0, self.r_max, self.n_basis,
                                       basis="gaussian", cutoff=False) * self.n_basis ** 0.5
        h = self.time(sinusoidal_embedding(t, self.time_width))[:, None].expand(-1, self.n_particles, -1)
        for interaction, gate in zip(self.interactions, self.gates):
            h = gate(interaction(h, self.neighbours, sh, radial))
        out = self.readout(h, self.neighbours, sh, radial)
        return remove_com(out.reshape(x.shape), self.n_particles, 3)


def _gate(irreps: o3.Irreps) -> Gate:
    """Gated nonlinearity whose output is `irreps`: SiLU (tanh for odd scalars) on the scalars,
    one sigmoid gate per non-scalar irrep."""
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l > 0])
    acts = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps(f"{gated.num_irreps}x0e" if gated else "")
    return Gate(scalars, acts, gates, [torch.sigmoid] * len(gates), gated)
