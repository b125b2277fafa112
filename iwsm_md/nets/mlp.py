"""MLP score net with sinusoidal time embeddings, for targets that are plain vectors (GMMs)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from iwsm_md.sde import GeometricVESDE


def sinusoidal_embedding(t: Tensor, width: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style embedding `(batch, width)` of times `t` `(batch,)` in [0, 1]."""
    half = width // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = 1000.0 * t[:, None] * freqs[None]  # t in [0, 1] spread over the frequency range
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return nn.functional.pad(emb, (0, width - 2 * half))


class MLPScore(nn.Module):
    """`s_θ(x, t)`: an MLP on [x, embed(t)] with SiLU activations.

    Args:
        dim: length of x.
        hidden: width of every hidden layer (published: 128).
        layers: number of hidden layers (published: 3).
        time_width: width of the sinusoidal time embedding.
    """

    def __init__(self, dim: int, hidden: int = 128, layers: int = 3, time_width: int = 64):
        super().__init__()
        self.dim, self.time_width = dim, time_width
        self.time = nn.Sequential(nn.Linear(time_width, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        blocks: list[nn.Module] = [nn.Linear(dim + hidden, hidden), nn.SiLU()]
        for _ in range(layers - 1):
            blocks += [nn.Linear(hidden, hidden), nn.SiLU()]
        blocks.append(nn.Linear(hidden, dim))
        self.body = nn.Sequential(*blocks)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Scores `(batch, dim)` at positions `x` `(batch, dim)` and times `t` `(batch,)`."""
        return self.body(torch.cat([x, self.time(sinusoidal_embedding(t, self.time_width))], dim=1))


class NoiseScaled(nn.Module):
    """`s(x, t) = net(x, t) / σ(t)`: the network predicts σ·score, which stays O(1) across noise
    levels, and its errors at small σ move reverse-SDE samples by only O(σ)."""

    def __init__(self, net: nn.Module, sde: GeometricVESDE):
        super().__init__()
        self.net, self.sde = net, sde

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Scores `(batch, dim)` at positions `(batch, dim)` and times `(batch,)`."""
        return self.net(x, t) / self.sde.sigma(t)[:, None]
