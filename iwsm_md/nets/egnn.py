"""E(n)-equivariant graph net (Satorras et al. 2021) on the fully connected particle graph: the
score net iDEM/DEM use for DW-4, LJ-13 and LJ-55.

Equivariant to rotations, reflections, translations and permutations of the particles in any
spatial dimension: every vector the net produces is a sum of relative positions `x_i − x_j`
weighted by invariants.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from iwsm_md.nets.mlp import sinusoidal_embedding
from iwsm_md.sde import remove_com


class EGNNLayer(nn.Module):
    """One E(n)-equivariant message-passing layer on the fully connected graph (no self-edges).

    `m_ij = φ_e(h_i, h_j, |x_i − x_j|²)`,
    `x_i ← x_i + Σ_{j≠i} (x_i − x_j) / (|x_i − x_j| + 1) · φ_x(m_ij) / (n − 1)` (EGNN's norm_diff),
    with `φ_x = coords_range · tanh(·)` (EGNN's tanh option, as in iDEM): a layer moves a particle by
    at most `coords_range`, so inputs far outside the training range cannot blow the net up,
    `h_i ← h_i + φ_h(h_i, Σ_{j≠i} m_ij / (n − 1))`, skipped when `update_features` is False
    (the last layer, whose features nothing reads).
    """

    def __init__(self, hidden: int, update_features: bool = True, coords_range: float = 15.0):
        super().__init__()
        self.coords_range = coords_range
        # φ_e's first linear map on [h_i, h_j, d²] applied per particle, then broadcast over pairs
        self.edge_i = nn.Linear(hidden, hidden)
        self.edge_j = nn.Linear(hidden, hidden, bias=False)
        self.edge_d2 = nn.Linear(1, hidden, bias=False)
        self.edge = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)  # EGNN's init: start near the identity map
        self.coord = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), last)
        self.node = (nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                     if update_features else None)

    def forward(self, h: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features `h` `(batch, n, hidden)` and positions `x` `(batch, n, d)` -> updated (same shapes)."""
        n = x.shape[1]
        diff = x[:, :, None] - x[:, None, :]  # (batch, n, n, d): x_i − x_j, zero on the diagonal
        d2 = (diff * diff).sum(-1, keepdim=True)
        pair = self.edge_i(h)[:, :, None] + self.edge_j(h)[:, None, :]
        pre = torch.addcmul(pair, d2, self.edge_d2.weight[:, 0])  # + edge_d2(d2), one pass fewer
        m = self.edge(pre)  # (batch, n, n, hidden), self-messages m_ii included
        unit = diff / (torch.sqrt(d2 + 1e-8) + 1.0)
        x = x + (unit * (self.coords_range * torch.tanh(self.coord(m)))).sum(2) / (n - 1)
        if self.node is not None:
            neighbours = m.sum(2) - torch.diagonal(m, dim1=1, dim2=2).transpose(1, 2)  # drop m_ii
            h = h + self.node(torch.cat([h, neighbours / (n - 1)], dim=-1))
        return h, x


class EGNNScore(nn.Module):
    """`s_θ(x, t)` for `n_particles` in `spatial_dim` dimensions: an EGNN on the fully connected graph.

    Node features start as a learned map of the time embedding (identical for every particle);
    the score is the displacement `x_final − x` the layers apply, minus its mean over particles,
    so it is centre-of-mass free and E(n)- and permutation-equivariant.

    Args:
        n_particles: particles per configuration.
        spatial_dim: dimension of space (2 or 3 for the benchmarks; any works).
        hidden: width of node features and messages (published: 128).
        layers: message-passing layers (published: 3 for DW-4, 5 for LJ-13/LJ-55).
        time_width: width of the sinusoidal time embedding.
        coords_range: largest displacement of a particle by one layer (length unit).
    """

    def __init__(self, n_particles: int, spatial_dim: int, hidden: int = 128, layers: int = 3, time_width: int = 32,
                 coords_range: float = 15.0):
        super().__init__()
        if n_particles < 2:
            raise ValueError(f"EGNNScore needs at least 2 particles, got {n_particles}")
        self.n_particles, self.spatial_dim, self.time_width = n_particles, spatial_dim, time_width
        self.time = nn.Sequential(nn.Linear(time_width, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.layers = nn.ModuleList(EGNNLayer(hidden, update_features=k < layers - 1, coords_range=coords_range)
                                    for k in range(layers))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Scores `(batch, n_particles*spatial_dim)` (inverse length units) at positions `x`
        `(batch, n_particles*spatial_dim)` (particle-major, the sampler's length unit) and times
        `t` `(batch,)` in [0, 1]."""
        pos0 = x.reshape(x.shape[0], self.n_particles, self.spatial_dim)
        h = self.time(sinusoidal_embedding(t, self.time_width))[:, None].expand(-1, self.n_particles, -1)
        pos = pos0
        for layer in self.layers:
            h, pos = layer(h, pos)
        out = pos - pos0
        return remove_com(out.reshape(x.shape), self.n_particles, self.spatial_dim)
