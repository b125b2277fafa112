"""The force prior of the score (`iwsm_md.force_prior`): exact for a Gaussian well, clipped and
centre-of-mass free for particles, NaN only where a position is, differentiable when asked, and
wired into training and sampling by `TrainConfig.force_prior`."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import iwsm_md
from iwsm_md import TrainConfig
from iwsm_md.energies import from_function
from iwsm_md.force_prior import ForcePrior
from iwsm_md.potentials import builtin_energy, gmm
from iwsm_md.sde import GeometricVESDE, Space

D64 = torch.float64
REFERENCE_LJ13 = Path(__file__).resolve().parents[1] / "data" / "reference" / "lj13.npz"
SDE = GeometricVESDE(1e-3, 10.0)
L = 0.3


def well(dim):
    """A Gaussian well of standard deviation L: E = |x|² / (2 L²)."""
    return from_function(lambda x: 0.5 * (x * x).sum(-1) / L**2, dim)


def test_prior_is_the_exact_noised_score_of_a_gaussian_well():
    energy = well(4)
    prior = ForcePrior(energy, SDE, Space.of(energy), L, clip=None, clip_per_particle=False)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(64, 4, dtype=D64, generator=g), torch.rand(64, dtype=D64, generator=g)
    exact = -x / (L**2 + SDE.sigma(t)[:, None] ** 2)  # the score of N(0, (L² + σ²) I)
    assert torch.allclose(prior(x, t), exact, rtol=1e-12, atol=0)


def test_particles_get_a_clipped_centre_of_mass_free_force():
    energy = builtin_energy("lj13")
    space = Space.of(energy)
    g = torch.Generator().manual_seed(1)
    x = space.project(0.6 * torch.randn(32, energy.dim, dtype=D64, generator=g))  # close pairs: huge forces
    t = torch.full((32,), 0.2, dtype=D64)
    prior = ForcePrior(energy, SDE, space, L, clip=5.0, clip_per_particle=True)
    out = prior(x, t)
    per_particle = out.reshape(32, 13, 3)
    assert per_particle.sum(1).abs().max() < 1e-12  # centre of mass free
    a = prior.weight(t)[0]
    # the projection can move a particle's norm above the clip by at most the mean's norm (≤ a · clip)
    assert per_particle.norm(dim=-1).max() <= 2 * a * 5.0 + 1e-12
    unclipped = ForcePrior(energy, SDE, space, L, clip=None, clip_per_particle=True)(x, t)
    assert unclipped.reshape(32, 13, 3).norm(dim=-1).max() > 10 * a * 5.0  # the clip did act


def test_lifted_clip_leaves_the_force_of_exact_samples_whole_at_small_noise():
    energy = builtin_energy("lj13")
    space = Space.of(energy)
    x = space.project(torch.as_tensor(np.load(REFERENCE_LJ13)["positions"][:16], dtype=D64))
    t = torch.zeros(16, dtype=D64)  # σ = σ_min = 1e-3
    free = ForcePrior(energy, SDE, space, L, clip=None, clip_per_particle=True)(x, t)
    norms = free.reshape(16, 13, 3).norm(dim=-1)
    assert norms.max() > 20  # exact samples whose forces a clip of 20 cuts
    edge = float(norms.max()) * math.sqrt(L**2 + float(SDE.sigma(t[0])) ** 2)  # the k at which the largest is cut
    for k, cut in ((1.01 * edge, False), (0.9 * edge, True)):
        lifted = ForcePrior(energy, SDE, space, L, clip=20.0, clip_per_particle=True, clip_lift=k)(x, t)
        assert torch.allclose(lifted, free, rtol=1e-12) != cut
    with pytest.raises(ValueError, match="well_width"):  # the blend's length is not the lift's
        TrainConfig(clip_lift=4.0, target_clip=20.0, blend_length=L)
    config = TrainConfig(clip_lift=4.0, target_clip=20.0, well_width=L, force_prior=True)
    sampler = iwsm_md.Sampler(energy, config, iwsm_md.training.build_net(space, config))
    assert sampler.clip_options["clip_length"] == L and sampler.force_prior.length == L


def test_non_finite_positions_give_nan_rows_only():
    energy = well(3)
    prior = ForcePrior(energy, SDE, Space.of(energy), L, clip=None, clip_per_particle=False)
    x = torch.randn(5, 3, dtype=D64, generator=torch.Generator().manual_seed(2))
    t = torch.full((5,), 0.5, dtype=D64)
    x[1, 2], x[3, 0] = float("nan"), float("inf")
    out = prior(x, t)
    bad = torch.tensor([False, True, False, True, False])
    assert torch.isnan(out[bad]).all()
    assert torch.equal(out[~bad], prior(x[~bad], t[~bad]))


def test_prior_is_differentiable_when_its_input_requires_grad():
    energy = well(3)
    prior = ForcePrior(energy, SDE, Space.of(energy), L, clip=None, clip_per_particle=False)
    t = torch.full((1,), 0.4, dtype=D64)
    x = torch.randn(1, 3, dtype=D64, generator=torch.Generator().manual_seed(3))
    jac = torch.autograd.functional.jacobian(lambda y: prior(y, t), x).reshape(3, 3)
    assert torch.allclose(jac, -torch.eye(3, dtype=D64) / (L**2 + SDE.sigma(t) ** 2), rtol=1e-12)
    with torch.no_grad():
        assert not prior(x.requires_grad_(True), t).requires_grad  # sampling: no graph


def test_config_needs_a_well_width_and_a_network():
    with pytest.raises(ValueError, match="well_width"):
        TrainConfig(force_prior=True, blend_length=0.1)
    with pytest.raises(ValueError, match="direct"):
        TrainConfig(force_prior=True, well_width=0.1, mode="direct")


def test_training_and_sampling_use_the_prior():
    target = gmm(2, loc_scale=4.0)
    cfg = dict(epochs=2, steps_per_epoch=5, batch_size=32, n_mc=8, samples_per_epoch=32, sample_steps=10,
               sigma_min=1e-3, sigma_max=1.5, scale=4.0, blend_length=0.25, target_clip=70.0,
               clip_per_particle=False, hidden=16, buffer_capacity=64, snis_n=4)
    with_prior = iwsm_md.train(target, force_prior=True, well_width=0.25, **cfg)
    assert all(h["n_skipped"] == 0 and h["loss"] == h["loss"] for h in with_prior.history)
    x, t = torch.randn(8, 2), torch.rand(8)
    with torch.no_grad():
        net_only = with_prior.net(x, t)
    assert torch.allclose(with_prior.score_fn()(x, t), net_only + with_prior.force_prior(x, t))
    assert torch.isfinite(with_prior.sample(64, steps=10)).all()
    assert iwsm_md.train(target, **cfg).force_prior is None


class _OnceDifferentiable(torch.autograd.Function):
    """|x|²/2 with a backward that cannot itself be differentiated (as OpenMM's fallback)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 0.5 * (x * x).sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out[:, None] * x


def test_likelihoods_need_an_energy_with_second_derivatives():
    energy = from_function(_OnceDifferentiable.apply, 2)
    config = TrainConfig(force_prior=True, well_width=1.0, hidden=8, layers=1, sigma_max=3.0)
    sampler = iwsm_md.Sampler(energy, config, iwsm_md.training.build_net(Space.of(energy), config))
    assert torch.isfinite(sampler.sample(2, steps=3)).all()  # sampling needs only the force
    with pytest.raises(ValueError, match="no second derivatives"):
        sampler.log_prob(torch.randn(2, 2), steps=2)
    dw4 = builtin_energy("dw4")  # a pair kernel with second derivatives: likelihoods work
    config = TrainConfig.published("dw4", force_prior=True, well_width=0.25, hidden=8, layers=1)
    sampler = iwsm_md.Sampler(dw4, config, iwsm_md.training.build_net(Space.of(dw4), config))
    assert torch.isfinite(sampler.log_prob(sampler.sample(2, steps=3), steps=2)).all()
