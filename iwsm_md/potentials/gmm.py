"""GMM-n: the 2D Gaussian-mixture benchmark, as in the FAB and iDEM code."""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from iwsm_md.energies.base import Energy


class GMMEnergy(Energy):
    """Energy `−log p(x)` of an equal-weight mixture of isotropic 2D Gaussians (log Z = 0).

    `p(x) = (1/M) Σ_m N(x; μ_m, σ² I)`; the energy is exactly the negative log density of this
    normalised mixture, so `exp(−E)` integrates to 1 (`log_z = 0.0`). Reduced units: positions
    `(batch, 2)` (n_particles = 1, spatial_dim = 2), energies `(batch,)` in kT. Evaluated with
    logsumexp in the input's dtype and device.

    Attributes:
        means: `(n_modes, 2)` float64 buffer of the mode centres.
        std: the per-coordinate standard deviation σ of every mode (a float).
        log_z: 0.0, the log normalising constant of `exp(−E)`.
    """

    log_z: float = 0.0

    def __init__(self, means: Tensor, std: float):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2 or means.shape[1] != 2 or means.shape[0] < 1:
            raise ValueError(f"means must have shape (n_modes >= 1, 2), got {tuple(means.shape)}")
        if not (std > 0 and math.isfinite(std)):
            raise ValueError(f"std must be positive and finite, got {std}")
        super().__init__(1, 2, length_unit=None, translation_invariant=False)
        self.register_buffer("means", means.clone())
        self.std = float(std)

    @property
    def n_modes(self) -> int:
        return self.means.shape[0]

    def _energy(self, pos: Tensor) -> Tensor:
        means = self.means.to(dtype=pos.dtype, device=pos.device)
        log_norm = math.log(self.n_modes) + 2.0 * math.log(self.std) + math.log(2.0 * math.pi)
        return log_norm - _MixtureLogSumExp.apply(pos[:, 0, :], means, self.std)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """`n` exact samples of the mixture, shape `(n, 2)`, on the device of `means`.

        Draws from `generator` (or the global RNG when None), which must live on that device.
        """
        device = self.means.device
        idx = torch.randint(self.n_modes, (int(n),), generator=generator, device=device)
        noise = torch.randn(int(n), 2, generator=generator, dtype=dtype, device=device)
        return self.means.to(dtype)[idx] + self.std * noise

    def noised_score(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Exact score `∇ log p_σ(x)` `(batch, 2)` of the mixture convolved with N(0, σ² I), at
        positions `x` `(batch, 2)` with noise levels `sigma` (a float or `(batch,)`), in the units
        of the means: `−(x − Σ_m r_m μ_m) / (std² + σ²)`, r the responsibilities of the noised modes.
        A perfect score network's output; float64 inside, returned in x's dtype."""
        x64 = x.double()
        var = self.std**2 + torch.as_tensor(sigma, dtype=torch.float64, device=x.device) ** 2
        var = var.reshape(-1, 1) if var.ndim else var
        d = x64[:, None, :] - self.means[None]
        r = torch.softmax(-(d * d).sum(-1) / (2 * var), dim=1)
        return (-(x64 - r @ self.means) / var).to(x.dtype)

    def extra_repr(self) -> str:
        return f"n_modes={self.n_modes}, std={self.std:.6g}"


def gmm(n_modes: int, seed: int = 0, loc_scale: float | None = None) -> GMMEnergy:
    """GMM-n as in FAB / iDEM: `torch.manual_seed(seed)`, means `(torch.rand(n, 2) − 0.5)·2·s`.

    Args:
        n_modes: number of equal-weight modes (40, 80, 120 in the benchmark).
        seed: torch seed of the means (0 in the benchmark). The caller's global torch RNG state
            is saved and restored.
        loc_scale: s, half the side of the square the means are drawn in; default
            `float(n_modes)` (s = 40, 80, 120 for GMM-40/80/120).

    Every mode has std softplus(1) ≈ 1.3133 in each coordinate. Returns a `GMMEnergy` with means
    equal to the float32 draws of the reference code.
    """
    if isinstance(n_modes, bool) or not isinstance(n_modes, numbers.Integral) or n_modes < 1:
        raise ValueError(f"n_modes must be a positive integer, got {n_modes!r}")
    s = float(n_modes) if loc_scale is None else float(loc_scale)
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"loc_scale must be positive and finite, got {loc_scale!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        means = (torch.rand(int(n_modes), 2) - 0.5) * 2 * s
    std = float(torch.nn.functional.softplus(torch.tensor(1.0, dtype=torch.float64)))
    return GMMEnergy(means, std)


class _MixtureLogSumExp(torch.autograd.Function):
    """`logsumexp_m(−|x − μ_m|² / 2σ²)` for x `(batch, 2)`, with the analytic gradient
    `−(x − Σ_m r_m μ_m)/σ²` (r the mode responsibilities): a few passes over (batch, n_modes)
    where autograd takes about twenty. Under `create_graph` the backward recomputes the gradient
    with recorded operations, so that second derivatives are available too."""

    @staticmethod
    def forward(ctx, x: Tensor, means: Tensor, std: float) -> Tensor:
        inv_var = 1.0 / std**2
        d = x[:, None, :] - means[None]  # differences, not a Gram expansion: exact near the modes in float32
        logits = (d * d).sum(-1) * (-0.5 * inv_var)
        top = logits.amax(1, keepdim=True)
        weights = torch.exp(logits - top)
        total = weights.sum(1, keepdim=True)
        out = (torch.log(total) + top).squeeze(1)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x, means, -(x - (weights / total) @ means) * inv_var)
            ctx.std = std
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, means, grad = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gradient again, with recorded operations
            d = x[:, None, :] - means[None]
            r = torch.softmax((d * d).sum(-1) * (-0.5 / ctx.std**2), dim=1)
            grad = -(x - r @ means) / ctx.std**2
        return grad_out[:, None] * grad, None, None
