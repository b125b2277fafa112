"""Likelihoods through the probability-flow ODE, importance weights, reweighted observables
and log Z, checked against closed forms.

For a Gaussian target N(0, Σ) the noised score is exact, `s(x, t) = −(Σ + σ(t)² I)⁻¹ x`, and the
probability-flow ODE is linear: along each eigenvector of Σ (eigenvalue λ) it scales x by
`√(v_t / v_0)`, `v_t = λ + σ(t)²`. So the density the ODE pushes back from the prior
N(0, σ_max² I) is known exactly, `log q(x_0) = log N(x_1; 0, σ_max² I) + ½ Σ log(v_1/v_0)`
with `x_1 = U diag(√(v_1/v_0)) Uᵀ x_0`: `log_prob` must match it up to Heun's O(1/steps²)
error, with no allowance for the prior's mismatch (σ_max² instead of λ + σ_max²).
"""
import math

import pytest
import torch

import iwsm_md
from iwsm_md.potentials import gmm
from iwsm_md.reweighting import effective_sample_size, importance_weights, log_partition, reweighted_mean
from iwsm_md.sampling import log_prob, probability_flow, sample_with_log_prob, space_basis
from iwsm_md.sde import GeometricVESDE, Space

SDE = GeometricVESDE(1e-3, 10.0)
D64 = torch.float64


class Gaussian:
    """N(0, B A Bᵀ) on the span of the orthonormal rows of `basis` (`(k, dim)`), A `(k, k)`."""

    def __init__(self, cov: torch.Tensor, basis: torch.Tensor | None = None):
        self.lam, self.u = torch.linalg.eigh(cov)
        self.basis = torch.eye(cov.shape[0], dtype=D64) if basis is None else basis

    def score(self, x, t):
        z = x @ self.basis.T @ self.u  # eigen-coordinates in the subspace
        z = -z / (self.lam + SDE.sigma(t)[:, None] ** 2)
        return z @ self.u.T @ self.basis

    def pushforward_log_prob(self, x):
        """The exact log density of the ODE's pushforward of N(0, σ_max²) (see the module docstring)."""
        v0, v1 = self.lam + SDE.sigma_min**2, self.lam + SDE.sigma_max**2
        z1 = (x @ self.basis.T @ self.u) * torch.sqrt(v1 / v0)
        k = len(self.lam)
        return (-0.5 * (z1 * z1).sum(-1) / SDE.sigma_max**2 - 0.5 * k * math.log(2 * math.pi * SDE.sigma_max**2)
                + 0.5 * torch.log(v1 / v0).sum())

    def sample(self, n, g):
        z = torch.randn(n, len(self.lam), dtype=D64, generator=g) * self.lam.sqrt()
        return z @ self.u.T @ self.basis


def random_cov(k, g):
    a = torch.randn(k, k, dtype=D64, generator=g)
    return 0.5 * a @ a.T + 0.3 * torch.eye(k, dtype=D64)


def com_free_basis(n, d, g):
    """An orthonormal basis `(n d − d, n d)` of the COM-free subspace, built independently of the
    library's (Gram–Schmidt of random vectors against the d translations)."""
    trans = torch.kron(torch.ones(1, n, dtype=D64), torch.eye(d, dtype=D64)) / math.sqrt(n)  # (d, n d)
    q, _ = torch.linalg.qr(torch.cat([trans, torch.randn(n * d - d, n * d, dtype=D64, generator=g)]).T)
    return q[:, d:].T


def max_error(target, space, x, steps):
    return (log_prob(target.score, SDE, space, x, steps) - target.pushforward_log_prob(x)).abs().max().item()


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("kind", ["isotropic", "correlated"])
def test_log_prob_of_a_gaussian_matches_the_exact_pushforward(dim, kind):
    g = torch.Generator().manual_seed(dim)
    s2 = 0.7
    target = Gaussian(s2 * torch.eye(dim, dtype=D64) if kind == "isotropic" else random_cov(dim, g))
    space = Space(1, dim, False)
    x = target.sample(32, g)
    e100, e200 = max_error(target, space, x, 100), max_error(target, space, x, 200)
    # Heun: error O(1/steps²); measured 0.020-0.027 at 100 steps and 0.005-0.007 at 200
    assert e200 < 0.012 and 3.0 < e100 / e200 < 5.0, (e100, e200)
    if kind == "isotropic":  # σ_max² ≫ s²: the pushforward is close to the true marginal N(0, s² + σ_min²)
        v0 = s2 + SDE.sigma_min**2
        true = -0.5 * (x * x).sum(-1) / v0 - 0.5 * dim * math.log(2 * math.pi * v0)
        # the mismatch: d/2 log(1 + s²/σ_max²) + |x|²/(2 v0) · s²/σ_max² ≲ 0.04 for these x
        mismatch = 0.5 * dim * math.log(1 + s2 / SDE.sigma_max**2) + 0.5 * (x * x).sum(-1) / v0 * s2 / SDE.sigma_max**2
        assert ((log_prob(target.score, SDE, space, x, 200) - true).abs() <= mismatch + 0.012).all()


class ZeroNet(torch.nn.Module):
    """A network whose score is 0 (with a graph through x): the force prior is the whole score."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros((), dtype=D64))

    def forward(self, x, t):
        return self.w * x


def test_sampler_log_prob_differentiates_through_the_force_prior():
    # for a Gaussian well of width L the force prior is the exact score, so a sampler whose
    # network outputs 0 has the Gaussian's exact pushforward density: its divergence needs the
    # force's Jacobian (the energy's Hessian), which a detached force would drop
    s2, dim, g = 0.09, 3, torch.Generator().manual_seed(4)
    energy = iwsm_md.energies.from_function(lambda x: 0.5 * (x * x).sum(-1) / s2, dim)
    config = iwsm_md.TrainConfig(sigma_min=SDE.sigma_min, sigma_max=SDE.sigma_max, force_prior=True,
                                 well_width=math.sqrt(s2), target_clip=None)
    sampler = iwsm_md.Sampler(energy, config, ZeroNet())
    target = Gaussian(s2 * torch.eye(dim, dtype=D64))
    x = target.sample(16, g)
    err = (sampler.log_prob(x, steps=200) - target.pushforward_log_prob(x)).abs().max().item()
    assert err < 0.012, err  # Heun's error at 200 steps, as in the test above
    assert (sampler.log_prob(x, steps=200) - log_prob(sampler.net, SDE, Space(1, dim, False), x, 200)).abs().min() > 1


def test_sampling_with_log_prob_follows_probability_flow():
    g = torch.Generator().manual_seed(1)
    target, space = Gaussian(random_cov(3, g)), Space(1, 3, False)
    x1 = SDE.prior_sample(32, space, dtype=D64, generator=g)
    x0, log_q = sample_with_log_prob(target.score, SDE, space, x1, 200)
    assert torch.equal(x0, probability_flow(target.score, SDE, space, x1, 200))
    assert (log_q - target.pushforward_log_prob(x0)).abs().max() < 0.012


def hutchinson_check(target, space, x, **kw):
    """Hutchinson's estimate on 2000 copies of one point: unbiased for the exact divergence
    (the same Heun steps, so the same expectation exactly), within 4 standard errors."""
    exact = log_prob(target.score, SDE, space, x, 20).item()
    copies = x.expand(2000, -1)
    est = log_prob(target.score, SDE, space, copies, 20, divergence="hutchinson",
                   generator=torch.Generator().manual_seed(7), **kw)
    assert abs(est.mean().item() - exact) < 4 * est.std().item() / math.sqrt(len(est)), (est.mean(), exact)
    return est.std().item()


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_agrees_with_the_exact_divergence(probe):
    g = torch.Generator().manual_seed(3)
    target, space = Gaussian(random_cov(3, g)), Space(1, 3, False)
    x = target.sample(1, g)
    one = hutchinson_check(target, space, x, probe=probe)
    four = hutchinson_check(target, space, x, probe=probe, n_probes=4)
    assert one > 0 and 1.6 < one / four < 2.5  # averaging 4 probes halves the standard deviation


def test_com_free_particles_use_the_density_on_the_subspace():
    n, d = 3, 2  # 3 particles in 2D: 4 effective degrees of freedom
    g = torch.Generator().manual_seed(5)
    space = Space(n, d, True)
    basis = space_basis(space, D64)
    assert basis.shape == (4, 6) and torch.allclose(basis @ basis.T, torch.eye(4, dtype=D64))
    assert torch.allclose(space.project(basis), basis)  # inside the COM-free subspace
    for cov in (0.5 * torch.eye(4, dtype=D64), random_cov(4, g)):
        target = Gaussian(cov, com_free_basis(n, d, g))
        x = target.sample(16, g)
        assert max_error(target, space, x, 100) < 0.03  # measured 0.010-0.014 at 100 steps
        shifted = x + torch.tensor([0.3, -1.0], dtype=D64).repeat(n)  # the COM is projected away
        assert torch.allclose(log_prob(target.score, SDE, space, shifted, 10),
                              log_prob(target.score, SDE, space, x, 10), atol=1e-9)
    hutchinson_check(target, space, x[:1])  # probes projected onto the subspace


# --- reweighting --------------------------------------------------------------------------

def gaussian_energy(x, s2):
    return 0.5 * (x * x).sum(-1) / s2  # log Z = d/2 log(2π s²)


def test_exact_samples_give_equal_weights_and_exact_log_z():
    g = torch.Generator().manual_seed(0)
    d, s2, n = 2, 1.7, 1000
    x = torch.randn(n, d, dtype=D64, generator=g) * math.sqrt(s2)
    log_z = 0.5 * d * math.log(2 * math.pi * s2)
    log_q = -gaussian_energy(x, s2) - log_z  # the exact normalised density
    w = importance_weights(-gaussian_energy(x, s2), log_q)
    assert w.n_masked == 0 and w.ess == pytest.approx(n, rel=1e-9)
    assert torch.allclose(w.log_w, torch.full((n,), -math.log(n), dtype=D64))
    est = log_partition(-gaussian_energy(x, s2), log_q)
    assert est.value == pytest.approx(log_z, abs=1e-10) and est.stderr < 1e-10
    r2 = (x * x).sum(-1)
    mean = reweighted_mean(r2, w.log_w)
    assert mean.value == pytest.approx(r2.mean().item(), rel=1e-12)
    assert mean.stderr == pytest.approx(r2.std(correction=0).item() / math.sqrt(n), rel=1e-9)
    assert abs(mean.value - d * s2) < 4 * mean.stderr  # E|x|² = d s²


def test_error_bars_are_calibrated():
    """Samples of a wider proposal N(0, τ²) for the target N(0, s²), 300 independent runs: the
    z-scores of log Z and of E|x|² against the exact values are close to standard normal."""
    g = torch.Generator().manual_seed(1)
    d, s2, tau2, n, runs = 2, 1.0, 1.8, 400, 300
    log_z, second = 0.5 * d * math.log(2 * math.pi * s2), d * s2
    z_logz, z_mean, ess = [], [], []
    for _ in range(runs):
        x = torch.randn(n, d, dtype=D64, generator=g) * math.sqrt(tau2)
        log_p = -gaussian_energy(x, s2)
        log_q = -gaussian_energy(x, tau2) - 0.5 * d * math.log(2 * math.pi * tau2)
        est = log_partition(log_p, log_q)
        w = importance_weights(log_p, log_q)
        mean = reweighted_mean((x * x).sum(-1), w.log_w)
        z_logz.append((est.value - log_z) / est.stderr)
        z_mean.append((mean.value - second) / mean.stderr)
        ess.append(w.ess)
    for z in (torch.tensor(z_logz), torch.tensor(z_mean)):
        assert 0.88 < (z.abs() < 2).float().mean() < 0.99 and abs(z.mean()) < 0.3 and 0.8 < z.std() < 1.25
    assert 0.3 * n < sum(ess) / runs < n  # weights vary: ESS below n


def test_vector_observables_and_effective_sample_size():
    log_w = torch.log(torch.tensor([1.0, 1.0, 2.0, 0.0]))  # the last weight is zero
    assert effective_sample_size(log_w) == pytest.approx(16 / 6)
    assert effective_sample_size(log_w + 50.0) == pytest.approx(16 / 6)  # unnormalised is fine
    values = torch.tensor([[0.0, 1.0], [2.0, 1.0], [1.0, 1.0], [math.inf, math.nan]])  # ignored at weight 0
    mean = reweighted_mean(values, log_w)
    assert mean.n_masked == 0 and torch.allclose(mean.value, torch.tensor([1.0, 1.0], dtype=D64))
    assert mean.stderr[1] < 1e-12 and mean.stderr[0] == pytest.approx(math.sqrt(1 / 16 + 1 / 16))


def test_non_finite_entries_are_masked_and_counted():
    log_p = torch.tensor([0.0, -1.0, math.nan, -math.inf, 0.5, math.inf])
    log_q = torch.tensor([0.0, math.nan, 0.0, 0.0, -math.inf, 0.0])
    # masked: log q NaN (1), E NaN (2), log q −inf (4), E −inf (5); E +inf (3) is a zero weight
    with pytest.warns(RuntimeWarning, match="4 of 6 samples"):
        w = importance_weights(log_p, log_q)
    assert w.n_masked == 4 and w.ess == pytest.approx(1.0)
    assert torch.isinf(w.log_w[1:]).all() and w.log_w[0] == 0.0
    with pytest.warns(RuntimeWarning, match="4 of 6 samples"):
        est = log_partition(log_p, log_q)
    assert est.n_masked == 4 and est.value == pytest.approx(math.log(0.5))  # weights 1 and 0 over n = 2
    with pytest.warns(RuntimeWarning, match="1 of 3 samples"):
        assert effective_sample_size(torch.tensor([0.0, 0.0, math.nan])) == pytest.approx(2.0)
    with pytest.warns(RuntimeWarning, match="1 of 3 samples"):
        mean = reweighted_mean(torch.tensor([1.0, math.nan, 3.0]), torch.zeros(3))
    assert mean.n_masked == 1 and mean.value == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no sample"):
        log_partition(torch.full((3,), -math.inf), torch.zeros(3))
    with pytest.raises(ValueError, match="same shape"):
        importance_weights(torch.zeros(3), torch.zeros(4))


# --- the Sampler ---------------------------------------------------------------------------

TINY = dict(epochs=2, steps_per_epoch=10, batch_size=64, n_mc=16, samples_per_epoch=64, sample_steps=20,
            sigma_min=1e-3, sigma_max=1.5, scale=4.0, lr=2e-3, target_clip=70.0, clip_per_particle=False,
            hidden=32, buffer_capacity=256, snis_n=4)


@pytest.fixture(scope="module")
def tiny():
    target = gmm(2, loc_scale=4.0)
    return target, iwsm_md.train(target, **TINY)


def test_sampler_log_prob_handles_the_scale(tiny):
    target, sampler = tiny
    x = target.sample(16, generator=torch.Generator().manual_seed(0)).float()
    lp = sampler.log_prob(x, steps=20)
    assert lp.shape == (16,) and torch.isfinite(lp).all()
    scaled = log_prob(sampler.net, sampler.sde, sampler.space, x / 4.0, 20)
    assert torch.allclose(lp, scaled - 2 * math.log(4.0), atol=1e-5)
    hutch = sampler.log_prob(x, steps=20, divergence="hutchinson", n_probes=2, seed=3)
    assert hutch.shape == (16,) and torch.isfinite(hutch).all()


def test_importance_sample_is_the_ode_sample_with_its_density(tiny):
    target, sampler = tiny
    s = sampler.importance_sample(32, steps=40, seed=4)
    assert torch.allclose(s.x, sampler.sample(32, steps=40, method="ode", seed=4))
    assert torch.allclose(s.energy, target(s.x).double())
    # the same density as log_prob, which integrates the other way: equal up to Heun's O(1/steps²)
    # (this barely trained net is stiff: mean gaps 0.24, 0.07, 0.02 at 40, 80, 160 steps; the ratio
    # 40 -> 160 was 7-12 over three training seeds, 16 asymptotically)
    gap40 = (s.log_q - sampler.log_prob(s.x, steps=40).double()).abs().mean()
    s160 = sampler.importance_sample(32, steps=160, seed=4)
    gap160 = (s160.log_q - sampler.log_prob(s160.x, steps=160).double()).abs().mean()
    assert gap160 < gap40 / 5, (gap40, gap160)
    assert s.n_masked == 0 and 1 <= s.ess <= 32
    assert torch.logsumexp(s.log_w, 0).item() == pytest.approx(0.0, abs=1e-9)
    est = log_partition(-s.energy, s.log_q)
    assert math.isfinite(est.value) and est.stderr >= 0


def test_direct_mode_has_no_likelihood():
    target = gmm(2, loc_scale=4.0)
    sampler = iwsm_md.train(target, mode="direct", **TINY)
    with pytest.raises(ValueError, match="network score"):
        sampler.log_prob(torch.zeros(2, 2))
