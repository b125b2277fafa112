"""Reliability: bad input is refused with a message naming the problem and the fix; numerical
faults of the energy never poison training; a run killed mid-way resumes from its last
checkpoint; property-based checks of the metrics, the trajectory round trips and the ASE adapter.

What other files already check is not repeated here (docs/reliability.md maps every failure to
its test): unknown config keys, bad modes, unknown built-in names and missing temperatures
(test_training.py), bad positions of an OpenMM energy, bad temperatures, periodic forces and
virtual sites (test_openmm_translation.py), bad ASE input (test_ase_translation.py), the CLI's
exit status 2 (test_cli.py), the in-process resume (test_training.py).
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import openmm
import pytest
import torch
from ase import Atoms
from ase.calculators.lj import LennardJones
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import iwsm_md
from iwsm_md import TrainConfig, io, metrics
from iwsm_md.cli import main
from iwsm_md.energies import from_ase, from_function, from_openmm
from iwsm_md.estimators import estimate_target, proposal_log_density, snis_weights
from iwsm_md.potentials import REDUCED_TEMPERATURE, double_well, gmm, lj_cluster, lj_cluster_atoms
from iwsm_md.sde import GeometricVESDE, Space
from iwsm_md.training import read_state

from test_ase_translation import assert_matches, atoms_with, random_cluster
from test_training import SMALL, mode_counts

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
TINY = dict(epochs=1, steps_per_epoch=2, batch_size=20, n_mc=4, snis_n=4, samples_per_epoch=20, sample_steps=3,
            hidden=16, layers=1, scale=4.0)


@pytest.fixture(scope="module")
def small_gmm():
    return gmm(4, loc_scale=10.0, seed=6)


@pytest.fixture(scope="module")
def dw4():
    return from_openmm(double_well(4), REDUCED_TEMPERATURE, spatial_dim=2)


@pytest.fixture(scope="module")
def gmm_file(tmp_path_factory, small_gmm):
    """A tiny GMM sampler saved as a training checkpoint (it holds the optimizer state too)."""
    path = tmp_path_factory.mktemp("gmm") / "gmm.pt"
    iwsm_md.train(small_gmm, checkpoint=path, **TINY)
    return path


# =============================================================================== 1. bad input
def test_builtin_names_and_temperatures_at_the_front_door(small_gmm):
    with pytest.raises(ValueError, match="no published settings for 'lj99'; known: gmm40"):
        TrainConfig.published("lj99")
    with pytest.raises(ValueError, match="temperature does not apply to the built-in system 'dw4'.*drop it"):
        iwsm_md.train("dw4", temperature=300.0)
    with pytest.raises(ValueError, match="already in units of kT: drop it"):
        iwsm_md.train(small_gmm, temperature=300.0)


@pytest.mark.parametrize("make, temperature", [
    (lambda: double_well(4), 0.0), (lambda: double_well(4), -300.0), (lambda: double_well(4), math.nan),
    (lambda: lj_cluster_atoms(3), 0.0), (lambda: lj_cluster_atoms(3), -1.0),
], ids=["openmm-0", "openmm-neg", "openmm-nan", "ase-0", "ase-neg"])
def test_non_positive_temperature_at_the_front_door(make, temperature):
    with pytest.raises(ValueError, match="temperature must be positive and finite"):
        iwsm_md.train(make(), temperature=temperature, spatial_dim=3, **TINY)


def test_zero_particles_at_the_front_door():
    with pytest.raises(ValueError, match="no particles"):
        iwsm_md.train(openmm.System(), temperature=300.0)
    empty = Atoms()
    empty.calc = LennardJones()
    with pytest.raises(ValueError, match="no atoms"):
        iwsm_md.train(empty, temperature=300.0)
    with pytest.raises(ValueError, match="at least one particle, got n_particles=0"):
        from_function(lambda x: x.sum(-1), n_particles=0, spatial_dim=3)
    with pytest.raises(ValueError, match="spatial_dim must be positive"):
        from_function(lambda x: x.sum(-1), dim=0)


@pytest.mark.parametrize("overrides, error, match", [
    ({"epochs": 2.5}, TypeError, r"TrainConfig.epochs must be an integer, got 2.5"),
    ({"epochs": "3"}, TypeError, r"TrainConfig.epochs must be an integer, got '3'"),
    ({"n_mc": True}, TypeError, r"TrainConfig.n_mc must be an integer"),
    ({"lr": "fast"}, TypeError, r"TrainConfig.lr must be a number"),
    ({"noise_scaled": "false"}, TypeError, r"TrainConfig.noise_scaled must be a bool"),
    ({"target_clip": "none"}, TypeError, r"TrainConfig.target_clip must be a number or None"),
    ({"n_mc": 0}, ValueError, "n_mc must be positive, got 0"),
    ({"hidden": 0}, ValueError, "hidden must be positive"),
    ({"sigma_min": 0.0}, ValueError, r"need 0 < sigma_min < sigma_max"),
    ({"sigma_min": 2.0, "sigma_max": 1.0}, ValueError, r"need 0 < sigma_min < sigma_max"),
    ({"sigma_max": math.inf}, ValueError, r"need 0 < sigma_min < sigma_max < inf"),
    ({"scale": 0.0}, ValueError, "scale must be positive and finite"),
    ({"lr": -1e-3}, ValueError, "lr must be positive and finite"),
    ({"lr": math.nan}, ValueError, "lr must be positive and finite"),
    ({"blend_length": 0.0}, ValueError, "blend_length must be positive"),
    ({"well_width": -0.1}, ValueError, "well_width must be positive"),
    ({"grad_clip": 0.0}, ValueError, "grad_clip must be positive"),
    ({"target_clip": -1.0}, ValueError, "target_clip must be positive"),
    ({"max_minutes": 0.0}, ValueError, "max_minutes must be positive"),
    ({"loss_floor": -1.0}, ValueError, "loss_floor must be finite and >= 0"),
    ({"device": "tpu"}, ValueError, "device must name a torch device such as 'cpu', 'cuda'"),
    ({"snis_normalise": "row"}, ValueError, "snis_normalise must be 'group' or 'batch'"),
    ({"snis_power": 0.0}, ValueError, "snis_power must be in"),
    ({"snis_power": float("nan")}, ValueError, "snis_power must be in"),
    ({"net": "transformer"}, ValueError, "net must be one of"),
    ({"mode": "iwsm", "batch_size": 3}, ValueError, "batch_size 3 is smaller than snis_n 5"),
])
def test_bad_config_values_name_the_field(overrides, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**overrides)
    with pytest.raises(error, match=match):  # and through train's keywords, before anything is built
        iwsm_md.train(gmm(2, loc_scale=4.0), **overrides)


def test_config_numbers_are_normalised_and_other_types_refused():
    c = TrainConfig(sigma_max=3, epochs=np.int64(4), noise_scaled=np.bool_(True), device=torch.device("cpu"))
    assert isinstance(c.sigma_max, float) and type(c.epochs) is int and c.noise_scaled is True
    assert c.device == "cpu" and TrainConfig(max_minutes=math.inf, grad_clip=math.inf, loss_floor=0.0)
    with pytest.raises(TypeError, match="config must be an iwsm_md.TrainConfig, got dict"):
        iwsm_md.train(gmm(2, loc_scale=4.0), config={"epochs": 1})
    with pytest.raises(ValueError, match=r"config keys \['future_knob'\] that this version .* does not know"):
        TrainConfig.from_dict({"future_knob": 1, "epochs": 2})


@NO_CUDA
def test_cuda_requested_but_absent_is_a_clear_error(capsys, tmp_path):
    assert TrainConfig(device="cuda").device == "cuda"  # a config is portable: only training checks the machine
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"device '{device}' was requested but CUDA is not available.*"
                                             "use device='cpu'"):
            iwsm_md.train(gmm(2, loc_scale=4.0), device=device, **TINY)
    code = main(["train", "--system", "gmm40", "--device", "cuda", "--out", str(tmp_path / "run"), "--no-progress",
                 "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "CUDA is not available" in err and "Traceback" not in err


def test_sampler_sample_arguments(small_gmm):
    s = iwsm_md.train(small_gmm, mode="direct", n_mc=4)
    assert s.sample(0).shape == (0, 2)
    for kwargs, match in [({"n": -1}, "n must be an integer >= 0"), ({"n": 2.5}, "n must be an integer"),
                          ({"n": 3, "steps": 0}, "steps must be an integer >= 1"),
                          ({"n": 3, "batch": 0}, "batch must be an integer >= 1"),
                          ({"n": 3, "method": "euler"}, "method must be 'sde' or 'ode'")]:
        with pytest.raises(ValueError, match=match):
            s.sample(**kwargs)


BAD_POSITIONS = [
    (lambda x: x[:, :-1], ValueError, r"shape \(batch, {dim}\)"),
    (lambda x: x[0], ValueError, r"shape \(batch, {dim}\)"),
    (lambda x: x[:, None, :], ValueError, r"shape \(batch, {dim}\)"),
    (lambda x: x.index_fill(1, torch.tensor([0]), math.nan), ValueError, "NaN or inf in 3 of 3"),
    (lambda x: x.index_fill(0, torch.tensor([1]), math.inf), ValueError, "NaN or inf in 1 of 3"),
    (lambda x: x.long(), ValueError, "floating point"),
    (lambda x: x.numpy(), TypeError, "torch.Tensor"),
]


@pytest.mark.parametrize("which", ["gmm", "function", "ase", "dw4"])
def test_every_kind_of_energy_refuses_bad_positions(which, small_gmm, dw4):
    """The OpenMM LJ-13 case is in test_openmm_translation.py; the check lives in `Energy.forward`,
    so every adapter refuses the same way, in `energy` and in `energy_and_forces`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        energy = {"gmm": lambda: small_gmm, "dw4": lambda: dw4,
                  "function": lambda: from_function(lambda x: (x * x).sum(-1), n_particles=3, spatial_dim=2),
                  "ase": lambda: from_ase(lj_cluster_atoms(3), 300.0)}[which]()
    x = torch.randn(3, energy.dim, dtype=torch.float64)
    assert torch.isfinite(energy(x)).all()
    for bad, error, match in BAD_POSITIONS:
        with pytest.raises(error, match=match.format(dim=energy.dim)):
            energy(bad(x))
        with pytest.raises(error, match=match.format(dim=energy.dim)):
            energy.energy_and_forces(bad(x))


def test_energy_function_returning_the_wrong_shape():
    with pytest.raises(ValueError, match=r"energy function returned shape \(3, 2\), expected \(3,\)"):
        from_function(lambda x: x, dim=2)(torch.zeros(3, 2))


def test_barostat_and_periodic_bonded_forces_are_refused():
    """Periodic nonbonded methods and virtual sites are in test_openmm_translation.py::test_bad_systems."""
    system = lj_cluster(3)
    system.addForce(openmm.MonteCarloBarostat(1.0, 300.0))
    with pytest.raises(ValueError, match=r"barostats \[\"MonteCarloBarostat .*need a periodic box.*remove them"):
        from_openmm(system, REDUCED_TEMPERATURE)
    system = lj_cluster(3)
    bond = openmm.HarmonicBondForce()
    bond.addBond(0, 1, 1.0, 10.0)
    bond.setUsesPeriodicBoundaryConditions(True)
    system.addForce(bond)
    with pytest.raises(ValueError, match=r"periodic forces .*HarmonicBondForce.*setUsesPeriodicBoundaryConditions\(False\)"):
        iwsm_md.train(system, temperature=REDUCED_TEMPERATURE, **TINY)


# ------------------------------------------------------------------------------- checkpoints
def test_unreadable_checkpoints(tmp_path, gmm_file, small_gmm):
    """`iwsm_md.load` of anything but a sampler file: a ValueError naming the file and the fix
    (a file of random bytes is in test_training.py::test_save_load_roundtrip)."""
    good = gmm_file.read_bytes()
    state = torch.load(gmm_file, weights_only=False)
    cases = {
        "empty.pt": b"", "truncated.pt": good[: len(good) // 2],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"(?s)cannot read sampler checkpoint .*{name}.*damaged or not written"):
            iwsm_md.load(tmp_path / name, energy=small_gmm)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"config": {}}, tmp_path / "dict.pt")
    for name in ("tensor.pt", "dict.pt"):
        with pytest.raises(ValueError, match="is not an iwsm_md sampler checkpoint.*Sampler.save"):
            iwsm_md.load(tmp_path / name, energy=small_gmm)
    torch.save({k: v for k, v in state.items() if k != "net"}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"is damaged: it lacks \['net'\]"):
        iwsm_md.load(tmp_path / "partial.pt", energy=small_gmm)
    torch.save({**state, "config": {**state["config"], "future_knob": 1}}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"\['future_knob'\] that this version of iwsm_md does not know"):
        iwsm_md.load(tmp_path / "future.pt", energy=small_gmm)
    with pytest.raises(ValueError, match="no such file; check the path"):
        iwsm_md.load(tmp_path / "missing.pt", energy=small_gmm)
    with pytest.raises(ValueError, match="it is a directory"):
        iwsm_md.load(tmp_path, energy=small_gmm)
    with pytest.raises(TypeError, match="energy must be an iwsm_md Energy, got str"):
        iwsm_md.load(gmm_file, energy="gmm40")
    iwsm_md.load(gmm_file, energy=small_gmm).save(tmp_path / "finished.pt")  # no training state
    with pytest.raises(ValueError, match="a finished sampler, not a training checkpoint: nothing to resume"):
        iwsm_md.train(small_gmm, checkpoint=tmp_path / "finished.pt", resume=True, **TINY)


def test_checkpoint_of_another_system_is_refused(tmp_path, gmm_file, small_gmm, dw4):
    with pytest.raises(ValueError, match=r"dimension mismatch: the sampler file was trained on an energy of 1 "
                                         r"particle\(s\) x 2 dims \(dim 2\), but the energy given has 4 particle"
                                         r"\(s\) x 2 dims \(dim 8\): pass the energy it was trained on"):
        iwsm_md.load(gmm_file, energy=dw4)
    with pytest.raises(ValueError, match=rf"dimension mismatch: checkpoint {gmm_file}"):  # resuming it
        iwsm_md.train(dw4, checkpoint=gmm_file, resume=True, **TINY)
    twin = from_function(lambda x: small_gmm(x), n_particles=1, spatial_dim=2, translation_invariant=True)
    assert iwsm_md.load(gmm_file, energy=twin).energy is twin  # one particle: nothing to be invariant to
    walker = from_function(lambda x: (x * x).sum(-1), n_particles=2, spatial_dim=1, translation_invariant=True)
    with pytest.raises(ValueError, match="dimension mismatch"):
        iwsm_md.load(gmm_file, energy=walker)
    # files written before the energy was recorded: the buffer's width still tells
    state = torch.load(gmm_file, weights_only=False)
    del state["energy"]
    torch.save(state, tmp_path / "old.pt")
    assert iwsm_md.load(tmp_path / "old.pt", energy=small_gmm).sample(4, steps=3).shape == (4, 2)
    with pytest.raises(ValueError, match=r"dimension mismatch: .* dim 2, but the energy given has 4 particle"):
        iwsm_md.load(tmp_path / "old.pt", energy=dw4)


def test_translation_invariance_and_length_unit_must_match(tmp_path, dw4):
    s = iwsm_md.train(dw4, **{**TINY, "scale": 1.0})
    s.save(tmp_path / "dw4.pt")
    plain = from_function(lambda x: dw4(x), n_particles=4, spatial_dim=2)  # not translation invariant
    with pytest.raises(ValueError, match="trained on a translation-invariant energy, the energy given is not"):
        iwsm_md.load(tmp_path / "dw4.pt", energy=plain)
    angstrom = from_ase(lj_cluster_atoms(4), 300.0)
    with pytest.raises(ValueError, match="dimension mismatch"):
        iwsm_md.load(tmp_path / "dw4.pt", energy=angstrom)
    state = torch.load(tmp_path / "dw4.pt", weights_only=False)
    state["energy"]["length_unit"] = "Å"
    torch.save(state, tmp_path / "dw4A.pt")
    with pytest.raises(ValueError, match="trained on an energy in Å, the energy given is in nm"):
        iwsm_md.load(tmp_path / "dw4A.pt", energy=dw4)


@NO_CUDA
def test_a_gpu_sampler_loads_on_the_cpu_with_a_warning(tmp_path, gmm_file, small_gmm):
    state = torch.load(gmm_file, weights_only=False)
    state["config"]["device"] = "cuda"
    torch.save(state, tmp_path / "gpu.pt")
    with pytest.warns(UserWarning, match="saved on 'cuda', which is not usable here: loading it on the CPU"):
        s = iwsm_md.load(tmp_path / "gpu.pt", energy=small_gmm)
    assert s.config.device == "cpu" and torch.isfinite(s.sample(8, steps=3)).all()


# ====================================================================== 2. numerical faults
def faulty(base):
    """`base` with E = NaN on ~5% and +inf on another ~5% of configurations, chosen by a hash
    of the coordinates (so the same configuration always fails the same way)."""

    def energy(x):
        e = base(x)
        h = torch.frac(x.detach().sum(-1).abs() * 1000)
        e = torch.where(h < 0.05, torch.full_like(e, math.nan), e)
        return torch.where((h >= 0.05) & (h < 0.10), torch.full_like(e, math.inf), e)

    return from_function(energy, dim=base.dim)


def test_the_fault_hash_hits_about_five_percent_each(small_gmm):
    x = torch.randn(20_000, 2, dtype=torch.float64) * 10
    e = faulty(small_gmm)(x)
    assert 0.04 < torch.isnan(e).double().mean() < 0.06
    assert 0.04 < torch.isposinf(e).double().mean() < 0.06
    assert torch.equal(torch.isnan(faulty(small_gmm)(x)), torch.isnan(e))  # deterministic


@pytest.mark.parametrize("mode", ["iwsm", "idem"])
def test_nan_and_inf_energies_never_poison_training(mode, small_gmm):
    energy = faulty(small_gmm)
    s = iwsm_md.train(energy, mode=mode, snis_n=4, **{**SMALL, "epochs": 8})
    assert all(torch.isfinite(p).all() for p in s.net.parameters())
    assert all(h["n_nonfinite"] > 0 and math.isfinite(h["loss"]) and h["n_skipped"] == 0 for h in s.history)
    # about 10% of the B·K copies of each epoch are NaN or +inf, and all were masked
    per_epoch = SMALL["steps_per_epoch"] * SMALL["batch_size"] * SMALL["n_mc"]
    assert all(0.07 < h["n_nonfinite"] / per_epoch < 0.13 for h in s.history)
    if mode == "iwsm":
        assert all(0 < h["weight_ess"] <= 1 for h in s.history)
    assert torch.isfinite(s.buffer.data[: len(s.buffer)]).all()
    x = s.sample(1000, steps=100)
    assert torch.isfinite(x).all()
    counts, near = mode_counts(x, small_gmm)  # an untrained net: 5% near a mode; clean training: ~50%
    assert near > 0.3 and (counts > 0.1 * 1000 / 4).all(), (near, counts)
    # the IWSM weights of a batch drawn from the trained buffer, with the faulty energy: finite
    g = torch.Generator().manual_seed(0)
    space, sde = Space.of(energy), GeometricVESDE(SMALL["sigma_min"], SMALL["sigma_max"])
    x0 = s.buffer.sample(64, g).repeat_interleave(4, 0)
    t = torch.rand(64, generator=g).repeat_interleave(4)
    x_t, sigma = sde.perturb(x0, t, space, generator=g), sde.sigma(t)
    est = estimate_target(s.scaled_energy, x_t, sigma, 32, space, generator=g)
    w = snis_weights(est.log_p, proposal_log_density(x_t, x0[::4], sigma, space), 4)
    assert est.n_nonfinite > 0 and torch.isfinite(est.score).all() and torch.isfinite(w.weights).all()


def test_a_nonfinite_gradient_step_is_skipped_and_counted(monkeypatch, small_gmm):
    """Defence in depth: were a target score ever NaN, the step is skipped, not taken; one NaN
    gradient would otherwise poison the parameters and Adam's moments for good."""
    from iwsm_md import training

    real, calls = training.estimate_target, []

    def sometimes_nan(*args, **kwargs):
        est = real(*args, **kwargs)
        calls.append(1)
        if len(calls) % 3 == 0:
            est.score = torch.full_like(est.score, math.nan)
        return est

    monkeypatch.setattr(training, "estimate_target", sometimes_nan)
    s = iwsm_md.train(small_gmm, **{**TINY, "epochs": 2, "steps_per_epoch": 6, "scale": 10.0})
    assert sum(h["n_skipped"] for h in s.history) == 4
    assert all(torch.isfinite(p).all() for p in s.net.parameters())
    assert torch.isfinite(s.sample(16, steps=5)).all()


# ================================================================= 3. interrupted runs
RUN = dict(epochs=8, steps_per_epoch=40, n_mc=8, batch_size=40, samples_per_epoch=50, sample_steps=5, hidden=16,
           layers=1)
EVERY = 20


def test_sigkill_loses_at_most_one_checkpoint_interval(tmp_path):
    """`iwsm-md train` killed with SIGKILL after its second checkpoint: the checkpoint loads, a
    truncated `.tmp` beside it is harmless, `--resume` continues from its step, and the result
    equals an uninterrupted run bit for bit (model, optimizer, buffer, RNG, history)."""
    out, total = tmp_path / "run", RUN["epochs"] * RUN["steps_per_epoch"]
    settings_ = [a for k, v in RUN.items() for a in ("--set", f"{k}={v}")]
    threads = str(torch.get_num_threads())  # same arithmetic in the child as in this process
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    cmd = [sys.executable, "-m", "iwsm_md.cli", "train", "--system", "gmm40", "--out", str(out),
           "--checkpoint-every", str(EVERY), "--no-progress", *settings_]
    ckpt = out / "checkpoint.pt"
    with open(tmp_path / "child.log", "wb") as log:
        child = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            versions, deadline = set(), time.monotonic() + 240
            while len(versions) < 2:  # the checkpoint was written, then replaced (a new inode)
                assert child.poll() is None, f"the run ended before it was killed: {(tmp_path / 'child.log').read_text()}"
                assert time.monotonic() < deadline, "no checkpoint within 240 s"
                try:
                    st_ = ckpt.stat()
                    versions.add((st_.st_ino, st_.st_mtime_ns))
                except FileNotFoundError:
                    pass
                time.sleep(0.005)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    killed = read_state(ckpt)  # the last complete checkpoint, never a partial write
    step = killed["training"]["step"]
    assert step % EVERY == 0 and 2 * EVERY <= step < total
    assert len(killed["history"]) == step // RUN["steps_per_epoch"]
    assert iwsm_md.load(ckpt).sample(8, steps=3).shape == (8, 2)  # a checkpoint is a sampler
    assert not (out / "sampler.pt").exists()
    (out / "checkpoint.pt.tmp").write_bytes(ckpt.read_bytes()[:4096])  # a write cut short, left behind

    assert main(["train", "--system", "gmm40", "--out", str(out), "--resume", "--no-progress",
                 "--checkpoint-every", str(EVERY)]) == 0
    assert not (out / "checkpoint.pt.tmp").exists()
    final, resumed = read_state(out / "checkpoint.pt"), read_state(out / "sampler.pt")
    assert final["training"]["step"] == total
    history = resumed["history"]
    assert [h["epoch"] for h in history] == list(range(RUN["epochs"]))
    assert [h["step"] for h in history] == [(e + 1) * RUN["steps_per_epoch"] for e in range(RUN["epochs"])]
    # continued, not restarted: the epochs done before the kill are kept as they were (wall times
    # included), and the clock went on from the checkpoint's
    assert history[: len(killed["history"])] == killed["history"]
    assert all(h["seconds"] >= killed["training"]["seconds"] for h in history[len(killed["history"]):])

    straight_ckpt = tmp_path / "straight.pt"
    straight = iwsm_md.train("gmm40", config=TrainConfig.published("gmm40", **RUN), checkpoint=straight_ckpt,
                             checkpoint_every=10 * total)
    ref = read_state(straight_ckpt)
    for key, value in straight.net.state_dict().items():
        assert torch.equal(resumed["net"][key], value), key
    assert torch.equal(resumed["buffer"]["data"], ref["buffer"]["data"])
    assert [h["loss"] for h in history] == [h["loss"] for h in straight.history]
    for a, b in zip(final["training"]["optimizer"]["state"].values(), ref["training"]["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(final["training"]["generator"], ref["training"]["generator"])
    assert torch.equal(final["training"]["torch_rng"], ref["training"]["torch_rng"])


def test_a_run_cut_by_max_minutes_resumes_its_unfinished_epoch(tmp_path, small_gmm):
    cfg = {**TINY, "epochs": 3, "steps_per_epoch": 4, "scale": 10.0}
    straight = iwsm_md.train(small_gmm, **cfg)
    cut = iwsm_md.train(small_gmm, checkpoint=tmp_path / "c.pt", max_minutes=1e-9, **cfg)  # stops after one step
    assert [(h["epoch"], h["step"], h.get("partial")) for h in cut.history] == [(0, 1, True)]
    resumed = iwsm_md.train(small_gmm, checkpoint=tmp_path / "c.pt", resume=True, **cfg)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]  # epoch 0 once, complete
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    for a, b in zip(straight.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)


def test_damaged_checkpoint_on_resume_is_a_one_line_error(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    assert main(["train", "--system", "gmm40", "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read sampler checkpoint" in err[0] and "train again" in err[0]


def test_ctrl_c_exits_130_and_points_to_resume(capsys, monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(iwsm_md, "train", interrupted)
    assert main(["train", "--system", "gmm40", "--out", str(tmp_path / "run"), "--no-progress"]) == 130
    assert capsys.readouterr().err.strip() == "iwsm-md train: interrupted; continue a training run with --resume"


# ====================================================================== 4. property tests
finite = dict(allow_nan=False, allow_infinity=False)
point_sets = st.integers(1, 3).flatmap(
    lambda d: st.tuples(*[arrays(np.float64, st.tuples(st.integers(1, 8), st.just(d)),
                                 elements=st.floats(-10, 10, **finite))] * 2))


@settings(max_examples=40, deadline=None)
@given(point_sets, st.randoms(use_true_random=False))
def test_wasserstein_zero_on_itself_and_blind_to_row_order(sets, rnd):
    """Symmetry, W2 >= W1 and the triangle inequality are in test_metrics.py."""
    x, y = sets
    assert metrics.w1(x, x) == pytest.approx(0.0, abs=1e-9) and metrics.w2(x, x) == pytest.approx(0.0, abs=1e-6)
    px, py = list(range(len(x))), list(range(len(y)))
    rnd.shuffle(px)
    rnd.shuffle(py)
    for p in (1, 2):
        d = metrics.wasserstein(x, y, p)
        assert d >= 0 and metrics.wasserstein(x[px], y[py], p) == pytest.approx(d, rel=1e-9, abs=1e-9)


values = arrays(np.float64, st.integers(1, 60), elements=st.floats(-5, 5, **finite))
generated = arrays(np.float64, st.integers(1, 60), elements=st.one_of(
    st.floats(-8, 8, **finite), st.sampled_from([math.nan, math.inf, -math.inf])))


@settings(max_examples=60, deadline=None)
@given(generated, values, st.integers(1, 12) | st.none(), st.randoms(use_true_random=False))
def test_histogram_tvd_is_a_probability_distance(a, ref, n_bins, rnd):
    d = metrics.histogram_tvd(a, ref, n_bins)
    assert 0.0 <= d <= 1.0 + 1e-12
    assert metrics.histogram_tvd(ref, ref, n_bins) == 0.0
    perm = list(range(len(a)))
    rnd.shuffle(perm)
    assert metrics.histogram_tvd(a[perm], ref[::-1], n_bins) == pytest.approx(d, abs=1e-12)
    if not np.isfinite(a).all():  # non-finite generated values always count against the sampler
        assert d >= (~np.isfinite(a)).mean() - 1e-12


planar = arrays(np.float64, st.tuples(st.integers(1, 40), st.just(2)), elements=st.floats(-5, 5, **finite))


@settings(max_examples=40, deadline=None)
@given(planar, planar, st.randoms(use_true_random=False))
def test_sample_and_distance_tvd_bounds(x, ref, rnd):
    d = metrics.sample_tvd(x, ref)
    assert 0.0 <= d <= 1.0 + 1e-12 and metrics.sample_tvd(ref, ref) == 0.0
    perm = list(range(len(x)))
    rnd.shuffle(perm)
    assert metrics.sample_tvd(x[perm], ref) == pytest.approx(d, abs=1e-12)
    if len(x) >= 2 and len(ref) >= 2:  # two 1-D particles per configuration
        x2, r2 = x.reshape(-1, 2), ref.reshape(-1, 2)
        dd = metrics.distance_tvd(x2, r2, 2, 1)
        assert 0.0 <= dd <= 1.0 + 1e-12 and metrics.distance_tvd(r2, r2, 2, 1) == 0.0
        assert metrics.distance_tvd(x2[:, ::-1], r2, 2, 1) == pytest.approx(dd, abs=1e-12)  # particle order


# ------------------------------------------------------------------------- io round trips
NM_PER_UNIT = {"nm": 1.0, "Å": 0.1, None: 1.0}
# absolute (nm) and relative error of each format's round trip (see iwsm_md/io.py): DCD float32,
# PDB 3 decimals in Å read back as float32 nm, XYZ 15 decimals, extended XYZ 8 decimals in Å
PRECISION = {".dcd": (1e-30, 2e-7), ".pdb": (5e-5 + 1e-7, 2e-7), ".xyz": (1e-14, 1e-14), ".extxyz": (1e-9, 1e-14)}
ELEMENTS = ["Ar", "Ne", "C", "N", "O", "H"]


@st.composite
def trajectories(draw):
    suffix = draw(st.sampled_from(io.FORMATS))
    unit = draw(st.sampled_from(list(NM_PER_UNIT)))
    n, spatial_dim, frames = draw(st.integers(1, 6)), draw(st.sampled_from([2, 3])), draw(st.integers(1, 4))
    bound = 90.0 / NM_PER_UNIT[unit]  # PDB's fixed-width fields hold > -1000 Å
    x = draw(arrays(np.float64, (frames, n * spatial_dim), elements=st.floats(-bound, bound, **finite)))
    elements = draw(st.lists(st.sampled_from(ELEMENTS), min_size=n, max_size=n))
    energies = draw(arrays(np.float64, frames, elements=st.floats(-1e6, 1e6, **finite))) if suffix == ".extxyz" else None
    return suffix, unit, spatial_dim, x, elements, energies


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trajectories())
def test_io_round_trips_within_format_precision(case):
    suffix, unit, spatial_dim, x, elements, energies = case
    n = x.shape[1] // spatial_dim
    with tempfile.TemporaryDirectory() as tmp:
        path = io.write(Path(tmp) / f"s{suffix}", x, n_particles=n, spatial_dim=spatial_dim, length_unit=unit,
                        element=elements, energies=energies)
        back = io.read(path, spatial_dim=spatial_dim, length_unit=unit)
    assert back.positions.shape == x.shape and back.positions.dtype == np.float64
    absolute, relative = PRECISION[suffix]
    tol = (absolute + relative * np.abs(x).max() * NM_PER_UNIT[unit]) / NM_PER_UNIT[unit]
    assert np.abs(back.positions - x).max() <= tol
    assert back.elements == tuple(elements) and back.length_unit == unit
    if energies is not None:
        np.testing.assert_allclose(back.energies, energies, rtol=1e-14, atol=0)


# ------------------------------------------------------------------- the ASE adapter
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 6), sigma=st.floats(0.8, 1.5), epsilon=st.floats(0.05, 2.0), rc=st.floats(2.0, 6.0),
       smooth=st.booleans(), ro=st.floats(0.3, 0.9), seed=st.integers(0, 2**32 - 1))
def test_random_lennard_jones_calculators_agree_with_ase(n, sigma, epsilon, rc, smooth, ro, seed):
    """`from_ase` of LennardJones with random σ, ε, cutoff and smoothing against ASE itself (the
    OpenMM counterpart, random CustomNonbonded/CustomBond systems, is in test_openmm_translation.py)."""
    rng = np.random.default_rng(seed)
    calc = LennardJones(sigma=sigma, epsilon=epsilon, rc=rc * sigma, ro=ro * rc * sigma, smooth=smooth)
    atoms = atoms_with(calc, random_cluster(n, 1.5 * sigma, rng, d_min=0.85 * sigma))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cutoff warning: a short rc is what is being tested
        energy = from_ase(atoms, 300.0)
    configs = np.stack([random_cluster(n, rc * sigma * 0.8, rng, d_min=0.85 * sigma) for _ in range(3)])
    assert_matches(energy, atoms, configs)
