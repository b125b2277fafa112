"""The IWSM loop, its modes, the Sampler API and checkpoints, on small targets."""
import pytest
import torch

import iwsm_md
from iwsm_md import TrainConfig
from iwsm_md.energies import from_function
from iwsm_md.potentials import double_well, gmm, REDUCED_TEMPERATURE

SMALL = dict(epochs=24, steps_per_epoch=25, blend_length=0.13, batch_size=128, n_mc=32, samples_per_epoch=256, sample_steps=100,
             sigma_min=1e-3, sigma_max=1.5, scale=10.0, lr=2e-3, target_clip=70.0, clip_per_particle=False,
             hidden=64, buffer_capacity=2048)


def mode_counts(x, target):
    d = torch.cdist(x.double(), target.means)
    near = d.min(1).values < 3 * target.std
    return torch.bincount(d.argmin(1)[near], minlength=target.n_modes), near.float().mean().item()


@pytest.fixture(scope="module")
def small_gmm():
    return gmm(4, loc_scale=10.0, seed=6)  # four modes, at least 4.4 (3.3 std) apart


@pytest.fixture(scope="module")
def trained(small_gmm):
    return iwsm_md.train(small_gmm, snis_n=4, **SMALL)


def test_iwsm_covers_every_mode(trained, small_gmm):
    counts, near = mode_counts(trained.sample(4000, steps=100), small_gmm)
    assert near > 0.8, f"only {near:.0%} of samples lie within 3 std of a mode"
    assert (counts > 0.1 * 4000 / 4).all(), f"mode counts {counts.tolist()}: a mode is (nearly) missed"
    assert len(trained.history) == SMALL["epochs"]
    assert all(0 < h["weight_ess"] <= 1 for h in trained.history)
    assert len(trained.buffer) == min(SMALL["buffer_capacity"], SMALL["samples_per_epoch"] * SMALL["epochs"])


@pytest.mark.parametrize("mode", ["idem", "pdem"])
def test_other_modes_train_and_sample(mode, small_gmm):
    s = iwsm_md.train(small_gmm, mode=mode, **{**SMALL, "epochs": 2})
    x = s.sample(500, steps=50)
    assert x.shape == (500, 2) and torch.isfinite(x).all()
    assert (s.buffer is None) == (mode == "pdem")
    assert all(h["weight_ess"] != h["weight_ess"] for h in s.history)  # NaN: no importance weights


def test_direct_mode_samples_with_the_mc_score(small_gmm):
    s = iwsm_md.train(small_gmm, mode="direct", **{**SMALL, "n_mc": 256})
    assert s.net is None
    counts, near = mode_counts(s.sample(400, steps=100), small_gmm)
    assert near > 0.8 and (counts > 0).all()


def test_save_load_roundtrip(tmp_path, trained, small_gmm):
    path = tmp_path / "s.pt"
    trained.save(path)
    with pytest.raises(ValueError, match="pass it as load"):
        iwsm_md.load(path)
    back = iwsm_md.load(path, energy=small_gmm)
    assert torch.equal(back.sample(64, steps=20, seed=5), trained.sample(64, steps=20, seed=5))
    assert torch.equal(back.buffer.data, trained.buffer.data) and back.history == trained.history
    assert not (tmp_path / "s.pt.tmp").exists()
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        iwsm_md.load(tmp_path / "bad.pt")


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, small_gmm, ema_decay):
    cfg = {**SMALL, "epochs": 4, "steps_per_epoch": 5, "samples_per_epoch": 64, "sample_steps": 10,
           "ema_decay": ema_decay}
    straight = iwsm_md.train(small_gmm, **cfg)
    ckpt = tmp_path / "run.pt"
    first = iwsm_md.train(small_gmm, checkpoint=ckpt, checkpoint_every=3, **{**cfg, "epochs": 2})
    assert ckpt.exists() and len(first.history) == 2
    assert iwsm_md.load(ckpt, energy=small_gmm).sample(8, steps=5).shape == (8, 2)  # a checkpoint is a sampler
    resumed = iwsm_md.train(small_gmm, checkpoint=ckpt, resume=True, **cfg)
    for a, b in zip(straight.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(straight.buffer.state_dict()["data"], resumed.buffer.state_dict()["data"])
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    with pytest.raises(ValueError, match=r"another config \(differs in \['lr'\]\)"):
        iwsm_md.train(small_gmm, checkpoint=ckpt, resume=True, **{**cfg, "lr": 1.0})
    with pytest.raises(ValueError, match="checkpoint_every must be positive"):
        iwsm_md.train(small_gmm, checkpoint=ckpt, checkpoint_every=0, **cfg)


def test_sampler_weights_are_the_moving_average_of_the_trained_ones(tmp_path, small_gmm):
    from iwsm_md.training import read_state

    cfg = {**SMALL, "epochs": 1, "steps_per_epoch": 1, "samples_per_epoch": 64, "sample_steps": 10, "ema_decay": 0.75}
    ckpt = tmp_path / "run.pt"
    iwsm_md.train(small_gmm, checkpoint=ckpt, **cfg)
    one = read_state(ckpt)
    sampler = iwsm_md.train(small_gmm, checkpoint=ckpt, resume=True, **{**cfg, "epochs": 2})
    two = read_state(ckpt)
    for name, trained in two["training"]["trained_net"].items():
        assert not torch.equal(one["net"][name], one["training"]["trained_net"][name])  # averaged, not copied
        torch.testing.assert_close(two["net"][name], 0.75 * one["net"][name] + 0.25 * trained)
        assert torch.equal(dict(sampler.net.named_parameters())[name], two["net"][name])  # the sampler's weights
    with pytest.raises(ValueError, match="ema_decay must lie in"):
        TrainConfig(ema_decay=1.0)


def test_openmm_system_front_door(tmp_path):
    s = iwsm_md.train(double_well(4), temperature=REDUCED_TEMPERATURE, spatial_dim=2, epochs=1, steps_per_epoch=2,
                      batch_size=32, n_mc=16, samples_per_epoch=32, sample_steps=10, sigma_max=3.0)
    x = s.sample(16, steps=10)
    assert x.shape == (16, 8)
    assert torch.allclose(x.reshape(16, 4, 2).mean(1), torch.zeros(16, 2), atol=1e-4)  # centre-of-mass free
    s.save(tmp_path / "dw.pt")
    back = iwsm_md.load(tmp_path / "dw.pt")  # rebuilds the energy from the saved System
    assert back.energy.dim == 8 and back.energy.length_unit == "nm"


def test_bad_config_and_system_raise():
    energy = from_function(lambda x: (x * x).sum(-1), dim=2)
    with pytest.raises(TypeError, match="unknown config keys"):
        iwsm_md.train(energy, epochz=3)
    with pytest.raises(ValueError, match="mode must be one of"):
        TrainConfig(mode="fast")
    with pytest.raises(ValueError, match="unknown built-in system"):
        iwsm_md.train("lj99")
    with pytest.raises(TypeError, match="system must be"):
        iwsm_md.train(42)
    with pytest.raises(TypeError, match="temperature is required"):
        iwsm_md.train(double_well(4), spatial_dim=2)
    assert TrainConfig.published("gmm40").scale == 50.0


def test_noise_scaled_net_divides_by_sigma_and_loss_weights_are_checked():
    from iwsm_md.nets import MLPScore, NoiseScaled
    from iwsm_md.sde import GeometricVESDE

    torch.manual_seed(0)
    net = MLPScore(3, hidden=16, layers=2)
    scaled = NoiseScaled(net, GeometricVESDE(0.01, 2.0))
    x, t = torch.randn(5, 3), torch.rand(5)
    sigma = 0.01 * (2.0 / 0.01) ** t
    assert torch.allclose(scaled(x, t), net(x, t) / sigma[:, None], rtol=1e-5)
    with pytest.raises(ValueError, match="loss_weight must be one of"):
        TrainConfig(loss_weight="cubic")
    s = iwsm_md.train(gmm(2, loc_scale=4.0), noise_scaled=True, loss_weight="sigma", epochs=1, steps_per_epoch=2,
                      batch_size=20, n_mc=8, snis_n=4, samples_per_epoch=20, sample_steps=5, scale=4.0)
    assert isinstance(s.net, NoiseScaled) and torch.isfinite(s.sample(10, steps=5)).all()
