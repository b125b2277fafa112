"""MC target score and density (Eq. 7) and SNIS weights (Eqs. 9-12) against analytic Gaussians."""
import math

import pytest
import torch

from iwsm_md.energies import from_function
from iwsm_md.estimators import clip_bound, estimate_target, proposal_log_density, snis_weights
from iwsm_md.sde import GeometricVESDE, Space

S = 0.7  # target std


def gaussian(dim):
    return from_function(lambda x: (x * x).sum(-1) / (2 * S**2), dim=dim)


def test_score_and_density_match_the_noised_gaussian():
    g = torch.Generator().manual_seed(0)
    energy, space = gaussian(2), Space(1, 2, False)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    sigma = torch.full((64,), 0.3, dtype=torch.float64)
    est = estimate_target(energy, x, sigma, 20000, space, generator=g)
    var = S**2 + 0.3**2
    assert torch.allclose(est.score, -x / var, atol=0.05 * (x.abs().max() / var))
    # log p_t + log Z with Z = (2π S²)^(d/2)
    exact = -(x * x).sum(-1) / (2 * var) - math.log(2 * math.pi * var) + math.log(2 * math.pi * S**2)
    assert torch.allclose(est.log_p, exact, atol=0.03)
    assert est.valid.all() and est.n_nonfinite == 0
    assert (est.inner_ess > 1).all() and (est.inner_ess <= 20000).all()


@pytest.mark.parametrize("sigma", [1e-4, 0.3, 5.0])
def test_blend_with_the_well_width_is_exact_for_a_gaussian_with_few_copies(sigma):
    # a = S²/(S²+σ²) makes every copy's blended term equal the exact noised score: zero variance
    g = torch.Generator().manual_seed(1)
    energy, space = gaussian(3), Space(1, 3, False)
    x = torch.randn(32, 3, generator=g, dtype=torch.float64) * 2
    sig = torch.full((32,), sigma, dtype=torch.float64)
    exact = -x / (S**2 + sigma**2)
    est = estimate_target(energy, x, sig, 2, space, blend_length=S, generator=g)
    assert torch.allclose(est.score, exact, rtol=1e-9, atol=1e-9)
    # Eq. 7 alone with 2 copies is far off at large σ: the blend is what removes the variance
    if sigma > S:
        plain = estimate_target(energy, x, sig, 2, space, generator=g)
        assert (plain.score - exact).norm(dim=-1).mean() > 0.5 * exact.norm(dim=-1).mean()


def test_lifted_clip_keeps_the_scores_of_the_well_typical_at_each_noise_level():
    # the blended estimate of a Gaussian well is exact; a fixed clip of 1 cuts it at every σ, the
    # lifted clip max(1, k/√(S² + σ²)) only where |score|·√(S² + σ²) > k, and it stays bounded
    g = torch.Generator().manual_seed(2)
    energy, space, k = gaussian(2), Space(1, 2, False), 4.0
    x = 3 * torch.randn(64, 2, generator=g, dtype=torch.float64)
    sigma = torch.cat([torch.full((32,), 0.01), torch.full((32,), 10.0)]).double()
    exact = -x / (S**2 + sigma[:, None] ** 2)
    kw = dict(clip=1.0, clip_per_particle=False, blend_length=S, generator=g)
    fixed = estimate_target(energy, x, sigma, 4, space, **kw).score
    lifted = estimate_target(energy, x, sigma, 4, space, clip_lift=k, clip_length=S, **kw).score
    assert fixed.norm(dim=-1).max() <= 1 + 1e-12 and exact[:32].norm(dim=-1).min() > 1
    bound = torch.clamp(k / torch.sqrt(S**2 + sigma**2), min=1.0)
    assert torch.equal(bound, clip_bound(1.0, sigma, k, S)) and float(bound.max()) <= k / S
    whole = exact.norm(dim=-1) <= bound
    assert whole[:32].any() and not whole[:32].all()  # the small-σ rows: some inside, some cut
    assert torch.allclose(lifted[whole], exact[whole], rtol=1e-9)
    assert torch.allclose(lifted.norm(dim=-1), exact.norm(dim=-1).clamp(max=bound), rtol=1e-9)
    assert torch.allclose(lifted[32:], fixed[32:], rtol=1e-12)  # k/σ < 1 at σ = 10: the clip itself
    assert clip_bound(1.0, sigma, None) == 1.0


def test_nonfinite_energies_are_masked_and_counted():
    def bad(x):
        e = (x * x).sum(-1) / 2
        return torch.where(x[:, 0] > 0, torch.full_like(e, float("nan")), e)

    energy, space = from_function(bad, dim=2), Space(1, 2, False)
    x = torch.tensor([[-3.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    est = estimate_target(energy, x, torch.full((2,), 0.1, dtype=torch.float64), 200, space)
    assert est.n_nonfinite > 0
    assert torch.isfinite(est.score).all()
    assert est.valid[0] and not est.valid[1]  # all copies of the second point have x > 0
    assert est.log_p[1] == -math.inf and torch.all(est.score[1] == 0)


def test_particle_score_is_com_free_and_clipped_per_particle():
    energy = from_function(lambda x: ((x.reshape(-1, 3, 2) - x.reshape(-1, 3, 2).mean(1, keepdim=True)) ** 2)
                           .sum((1, 2)) * 50, n_particles=3, spatial_dim=2, translation_invariant=True)
    space = Space.of(energy)
    assert space.com_free and space.effective_dim == 4
    x = space.project(torch.randn(8, 6, dtype=torch.float64) * 3)
    est = estimate_target(energy, x, torch.full((8,), 0.1, dtype=torch.float64), 64, space, clip=2.0)
    per_particle = est.score.reshape(8, 3, 2)
    assert torch.allclose(per_particle.sum(1), torch.zeros(8, 2, dtype=torch.float64), atol=1e-10)
    # clipped per particle (to 2), then projected: the projection cannot increase the total norm
    assert (est.score.norm(dim=-1) <= 2.0 * 3**0.5 + 1e-9).all()
    unclipped = estimate_target(energy, x, torch.full((8,), 0.1, dtype=torch.float64), 64, space,
                                generator=torch.Generator().manual_seed(0))
    assert unclipped.score.reshape(8, 3, 2).norm(dim=-1).max() > 2.0 * 3**0.5  # the clip was active


def test_proposal_density_is_the_gaussian_mixture():
    space = Space(1, 3, False)
    x0 = torch.randn(5, 3, dtype=torch.float64)
    x_t = torch.randn(4, 3, dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 2.0, 0.1], dtype=torch.float64)
    got = proposal_log_density(x_t, x0, sigma, space)
    for i in range(4):
        comps = torch.distributions.MultivariateNormal(x0, sigma[i] ** 2 * torch.eye(3, dtype=torch.float64))
        assert got[i] == pytest.approx(float(torch.logsumexp(comps.log_prob(x_t[i]), 0) - math.log(5)), rel=1e-10)


@pytest.mark.parametrize("group_size", [None, 4])
def test_snis_weights_normalise_and_mask(group_size):
    log_p = torch.tensor([0.0, 1.0, -math.inf, 2.0, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    w = snis_weights(log_p, torch.zeros(8, dtype=torch.float64), group_size)
    n = 8 if group_size is None else 4
    assert torch.allclose(w.weights.reshape(-1, n).mean(1), torch.ones(8 // n, dtype=torch.float64))
    assert w.weights[2] == 0
    if group_size == 4:
        assert torch.allclose(w.weights[4:], torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="SNIS groups"):
        snis_weights(log_p[:7], torch.zeros(7, dtype=torch.float64), 4)


@pytest.mark.parametrize("group_size", [None, 4])
def test_snis_power_tempers_the_weights(group_size):
    """β = 1 is plain SNIS, β = 0 equal weights on the valid points, and between them the
    normalised weights are ∝ (p/q)^β: their effective sample size grows as β falls."""
    g = torch.Generator().manual_seed(0)
    log_p, log_q = 2 * torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    log_p[5] = -math.inf
    n = 8 if group_size is None else 4
    plain = snis_weights(log_p, log_q, group_size)
    assert torch.equal(snis_weights(log_p, log_q, group_size, 1.0).weights, plain.weights)
    flat = snis_weights(log_p, log_q, group_size, 0.0).weights.reshape(-1, n)
    valid = torch.isfinite(log_p).reshape(-1, n).double()
    assert torch.allclose(flat, valid * n / valid.sum(1, keepdim=True))
    half = snis_weights(log_p, log_q, group_size, 0.5)
    expected = (torch.exp(0.5 * (log_p - log_q))).reshape(-1, n)
    assert torch.allclose(half.weights.reshape(-1, n), n * expected / expected.sum(1, keepdim=True))
    assert plain.ess_fraction < half.ess_fraction < 1


def test_iwsm_weights_reduce_to_one_with_exact_buffer_samples():
    """A buffer of exact target samples makes the proposal the noised target: weights ≈ 1."""
    g = torch.Generator().manual_seed(1)
    dim, space = 2, Space(1, 2, False)
    energy, sde = gaussian(dim), GeometricVESDE(0.05, 1.0)
    buffer = S * torch.randn(4096, dim, generator=g, dtype=torch.float64)  # exact samples of the target
    x0 = buffer[torch.randint(4096, (256,), generator=g)]
    t = torch.rand(256, generator=g, dtype=torch.float64)
    x_t = sde.perturb(x0, t, space, generator=g)
    est = estimate_target(energy, x_t, sde.sigma(t), 4000, space, generator=g)
    w = snis_weights(est.log_p, proposal_log_density(x_t, buffer, sde.sigma(t), space))
    assert w.ess_fraction > 0.9
    assert (w.weights - 1).abs().median() < 0.1
