"""VE-SDE schedule, centre-of-mass-free noise, and the replay buffer."""
import math

import pytest
import torch

from iwsm_md.buffer import ReplayBuffer
from iwsm_md.sde import GeometricVESDE, Space, remove_com


def test_geometric_schedule_and_g2_is_the_derivative_of_variance():
    sde = GeometricVESDE(0.01, 2.0)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert sde.sigma(t)[0] == pytest.approx(0.01) and sde.sigma(t)[-1] == pytest.approx(2.0)
    h = 1e-6
    numeric = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    assert torch.allclose(sde.g2(t), numeric, rtol=1e-6)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        GeometricVESDE(2.0, 1.0)


def test_com_free_noise_has_zero_mean_and_unit_variance_per_dof():
    space = Space(4, 2, True)
    eps = space.noise(200000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert eps.reshape(-1, 4, 2).mean(1).abs().max() < 1e-12
    # total variance = effective dimension (6 of 8)
    assert (eps * eps).sum(1).mean().item() == pytest.approx(space.effective_dim, rel=0.01)


def test_prior_and_perturb_scales():
    sde, space = GeometricVESDE(0.1, 3.0), Space(1, 2, False)
    g = torch.Generator().manual_seed(0)
    prior = sde.prior_sample(100000, space, dtype=torch.float64, generator=g)
    assert prior.std(0).mean().item() == pytest.approx(3.0, rel=0.01)
    x0 = torch.zeros(100000, 2, dtype=torch.float64)
    xt = sde.perturb(x0, torch.full((100000,), 0.5, dtype=torch.float64), space, generator=g)
    assert xt.std(0).mean().item() == pytest.approx(math.sqrt(0.1 * 3.0), rel=0.01)


def test_remove_com():
    x = torch.randn(3, 8)
    y = remove_com(x, 4, 2)
    assert torch.allclose(y.reshape(3, 4, 2).mean(1), torch.zeros(3, 2), atol=1e-6)
    assert torch.allclose(y - x, (y - x).reshape(3, 4, 2)[:, :1].expand(3, 4, 2).reshape(3, 8))


def test_buffer_fifo_sample_and_state_roundtrip():
    buf = ReplayBuffer(5, 2)
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(1)
    buf.add(torch.arange(6.0).reshape(3, 2))
    buf.add(torch.tensor([[6.0, 7.0], [float("nan"), 0.0], [8.0, 9.0], [10.0, 11.0]]))
    assert len(buf) == 5 and buf.n_rejected == 1
    assert sorted(buf.data[:, 0].tolist()) == [2.0, 4.0, 6.0, 8.0, 10.0]  # the oldest (0) was overwritten
    other = ReplayBuffer(5, 2)
    other.load_state_dict(buf.state_dict())
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(buf.sample(7, g1), other.sample(7, g2))
    with pytest.raises(ValueError, match="shape"):
        buf.add(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(4, 2).load_state_dict(buf.state_dict())
