"""The IWSM training loop and its modes, the `Sampler` it returns, and the front door `train`.

Modes share one loop:
- `iwsm`: buffer proposal, MC target score, self-normalised importance weights (default);
- `idem`: the same with all weights 1 (iDEM);
- `pdem`: weights 1 and no buffer: x_0 drawn from the prior (pDEM);
- `direct`: no network; sampling integrates the reverse SDE with the MC score estimate itself.

Every epoch (except in `pdem` and `direct`) the reverse SDE refills the FIFO buffer from the
prior with the current network; then `steps_per_epoch` gradient steps minimise
`mean_b w_b λ(σ(t_b)) ||s_θ(x_t, t) − ŝ(x_t, t)||²` (λ = σ², σ or 1 (`loss_weight`), plus
`loss_floor`).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import numbers
import os
import time
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from iwsm_md import distributed
from iwsm_md.buffer import ReplayBuffer
from iwsm_md.energies.base import Energy, ScaledEnergy
from iwsm_md.estimators import estimate_target, proposal_log_density, snis_weights
from iwsm_md.force_prior import ForcePrior
from iwsm_md.nets import EGNNScore, MLPScore, NoiseScaled
from iwsm_md.reweighting import ImportanceSample, importance_weights
from iwsm_md.sampling import log_prob, probability_flow, reverse_sde, sample_with_log_prob
from iwsm_md.sde import GeometricVESDE, Space

MODES = ("iwsm", "idem", "pdem", "direct")
NETS = ("auto", "mlp", "egnn", "e3nn")
# λ(σ) weighting of the score-matching loss per noise level
LOSS_WEIGHTS = {"sigma2": lambda s: s * s, "sigma": lambda s: s, "one": torch.ones_like}


@dataclass
class TrainConfig:
    """Every setting of a training run. `TrainConfig.published(name)` gives the published
    settings of a built-in system (iDEM's, which IWSM keeps); other systems start from these
    defaults."""

    mode: str = "iwsm"
    epochs: int = 100
    steps_per_epoch: int = 100
    batch_size: int = 512
    n_mc: int = 500  # K, noisy copies per point for the target score
    sigma_min: float = 1e-5
    sigma_max: float = 1.0
    scale: float = 1.0  # the sampler works in x / scale
    lr: float = 5e-4
    grad_clip: float = 1.0
    ema_decay: float | None = None  # sample with an exponential moving average of the weights (e.g. 0.999)
    noise_scaled: bool = False  # the net predicts σ·score (s = net / σ) instead of the score
    loss_weight: str = "sigma2"  # λ(t) of the score-matching loss: "sigma2" (σ(t)²), "sigma" or "one"
    loss_floor: float = 1e-3  # added to λ(t) (iDEM's ε), so that small noise levels still count
    target_clip: float | None = None
    clip_per_particle: bool = True
    clip_lift: float | None = None  # k: the clip rises to max(target_clip, k/√(L²+σ²)), L = well_width
    well_width: float | None = None  # L (scaled units), the width of the target's wells: clip_lift's and force_prior's
    blend_length: float | None = None  # blend Eq. 7 with Tweedie's estimate at this width (estimators.py)
    force_prior: bool = False  # score = L²/(L²+σ²) · clipped force + net (force_prior.py); needs well_width
    snis_n: int = 5  # noisy copies per (x_0, t) in IWSM: a batch is batch_size // snis_n such groups
    snis_normalise: str = "group"  # "group": over each (x_0, t)'s copies; "batch": over the batch
    snis_power: float = 1.0  # β: IWSM weights ∝ (p̂_t/p̂_B,t)^β before normalising; 0 would be iDEM's
    buffer_capacity: int = 10_000
    samples_per_epoch: int = 1000  # reverse-SDE samples added to the buffer each epoch
    sample_steps: int = 1000  # Euler-Maruyama steps of the reverse SDE
    net: str = "auto"  # "mlp", "egnn", "e3nn"; "auto": mlp for one particle, egnn for particle systems
    hidden: int = 128
    layers: int = 3
    seed: int = 0
    device: str = "cpu"
    max_minutes: float | None = None  # stop after this much training wall time

    def __post_init__(self):
        self._check_types()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"loss_weight must be one of {tuple(LOSS_WEIGHTS)}, got {self.loss_weight!r}")
        if self.snis_normalise not in ("group", "batch"):
            raise ValueError(f"snis_normalise must be 'group' or 'batch', got {self.snis_normalise!r}")
        if not 0 < self.snis_power <= 1:
            raise ValueError(f"snis_power must be in (0, 1] (0 is mode='idem'), got {self.snis_power}")
        if self.net not in NETS:
            raise ValueError(f"net must be one of {NETS}, got {self.net!r}")
        if self.mode == "iwsm" and self.batch_size < self.snis_n:
            raise ValueError(f"batch_size {self.batch_size} is smaller than snis_n {self.snis_n}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "n_mc", "snis_n", "buffer_capacity",
                     "samples_per_epoch", "sample_steps", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not (0 < self.sigma_min < self.sigma_max < math.inf):
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={self.sigma_min}, "
                             f"sigma_max={self.sigma_max}")
        for name in ("scale", "lr", "well_width", "blend_length", "clip_lift"):  # positive and finite (None: unset)
            value = getattr(self, name)
            if value is not None and not (0 < value < math.inf):
                raise ValueError(f"{name} must be positive and finite, got {value}")
        if self.clip_lift is not None and (self.well_width is None or self.target_clip is None):
            raise ValueError("clip_lift lifts target_clip below the well width L: set well_width and target_clip")
        if self.force_prior and self.well_width is None:
            raise ValueError("force_prior needs well_width, the well width L that scales the force "
                             "(a = L²/(L²+σ²)): set well_width")
        if self.force_prior and self.mode == "direct":
            raise ValueError("force_prior adds the force to a network's score; mode 'direct' has no network")
        if self.ema_decay is not None and not (0 < self.ema_decay < 1):
            raise ValueError(f"ema_decay must lie in (0, 1) (or be None: no averaging), got {self.ema_decay}")
        for name in ("grad_clip", "target_clip", "max_minutes"):  # positive; inf: no limit
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (inf or none: no limit), got {value}")
        if not (0 <= self.loss_floor < math.inf):
            raise ValueError(f"loss_floor must be finite and >= 0, got {self.loss_floor}")
        try:
            self.device = str(torch.device(self.device))
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"device must name a torch device such as 'cpu', 'cuda' or 'cuda:1', got "
                             f"{self.device!r} ({err})") from None

    def _check_types(self) -> None:
        """TypeError naming the field and the type it needs, for a value of another type; ints
        are accepted (and stored as floats) for float fields, numpy scalars for numbers."""
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), _field_types()[f.name]
            args = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
            if value is None and len(args) < len(typing.get_args(hint)):
                continue
            for kind in args:
                if kind is bool and isinstance(value, (bool, np.bool_)):
                    setattr(self, f.name, bool(value))
                    break
                if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
                    setattr(self, f.name, int(value))
                    break
                if kind is float and isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
                    setattr(self, f.name, float(value))
                    break
                if kind is str and (isinstance(value, str) or (f.name == "device" and isinstance(value, torch.device))):
                    break
            else:
                names = {bool: "a bool", int: "an integer", float: "a number", str: "a string"}
                wanted = " or ".join(names.get(a, a.__name__) for a in args)
                optional = " or None" if len(args) < len(typing.get_args(hint)) else ""
                raise TypeError(f"TrainConfig.{f.name} must be {wanted}{optional}, got {value!r} "
                                f"({type(value).__name__})")

    @classmethod
    def published(cls, name: str, **overrides) -> "TrainConfig":
        """Published settings of a built-in system ("gmm40", "gmm80", "gmm120", "dw4", "lj13", "lj55").

        Their `target_clip` cuts the small-σ score, the force, of most exact GMM-80/120 samples and
        LJ particles, which biases samples hot (benchmarks/results/clip_share.md); `clip_lift=k`
        with `well_width` set to the width L of its wells lifts the clip to k/√(L²+σ²) where that is
        larger (`estimators.clip_bound`)."""
        key = name.lower().replace("-", "").replace("_", "")
        gmm = dict(n_mc=500, sigma_min=1e-5, sigma_max=1.0, lr=5e-4, batch_size=512, target_clip=70.0,
                   clip_per_particle=False, snis_n=5, epochs=1000)
        presets = {
            "gmm40": dict(gmm, scale=50.0),
            "gmm80": dict(gmm, scale=100.0, buffer_capacity=20_000),
            "gmm120": dict(gmm, scale=150.0),
            "dw4": dict(n_mc=1000, sigma_min=1e-5, sigma_max=3.0, lr=1e-3, target_clip=20.0, snis_n=2),
            "lj13": dict(n_mc=1000, sigma_min=0.01, sigma_max=2.0, lr=1e-3, target_clip=20.0, snis_n=2, layers=5),
            "lj55": dict(n_mc=100, sigma_min=0.5, sigma_max=4.0, lr=1e-3, batch_size=128, target_clip=20.0,
                         snis_n=2, layers=5),
        }
        if key not in presets:
            raise ValueError(f"no published settings for {name!r}; known: {', '.join(presets)}")
        return cls(**{**presets[key], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the saved config") -> "TrainConfig":
        """A config from a dict such as `dataclasses.asdict(config)` (a checkpoint's); ValueError
        naming `source` and the keys this version does not know."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"{source} has config keys {unknown} that this version of iwsm_md does not know: "
                             "it was written by another version; use that version or start a new run")
        return cls(**values)

    @classmethod
    def with_overrides(cls, base: "TrainConfig", overrides: dict[str, Any]) -> "TrainConfig":
        """`base` with `overrides` applied; unknown keys raise TypeError naming the valid ones."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - valid
        if unknown:
            raise TypeError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(valid)}")
        return dataclasses.replace(base, **overrides)


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def device_problem(device: str) -> str | None:
    """Why `device` cannot be used on this machine (a sentence naming the fix), or None."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        return f"{device!r} is not a torch device ({err}): use 'cpu' or 'cuda'"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")
            return (f"device {device!r} was requested but CUDA is not available ({why}, torch {torch.__version__}): "
                    "use device='cpu', or install a CUDA build of torch on a machine with a GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return (f"device {device!r} was requested but only {torch.cuda.device_count()} CUDA device(s) are "
                    f"visible: use an index below {torch.cuda.device_count()}")
        return None
    if dev.type == "cpu":
        return None
    try:
        torch.empty(1, device=dev)
    except Exception as err:  # torch raises RuntimeError or AssertionError for absent backends
        return f"device {device!r} is not usable here ({type(err).__name__}: {err}): use device='cpu'"
    return None


@dataclass
class Sampler:
    """A trained sampler of an energy's Boltzmann distribution.

    `sample(n)` returns `(n, dim)` configurations in the energy's own coordinates.
    """

    energy: Energy
    config: TrainConfig
    net: torch.nn.Module | None
    buffer: ReplayBuffer | None = None
    history: list[dict] = field(default_factory=list)
    source: dict | None = None  # how to rebuild the energy on load (see `iwsm_md.api`)

    @property
    def sde(self) -> GeometricVESDE:
        return GeometricVESDE(self.config.sigma_min, self.config.sigma_max)

    @property
    def space(self) -> Space:
        return Space.of(self.energy)

    @property
    def scaled_energy(self) -> Energy:
        return ScaledEnergy(self.energy, self.config.scale) if self.config.scale != 1.0 else self.energy

    @property
    def force_prior(self) -> ForcePrior | None:
        """The force part of the score (`config.force_prior`), in scaled coordinates, or None."""
        cfg = self.config
        if not cfg.force_prior:
            return None
        return ForcePrior(self.scaled_energy, self.sde, self.space, cfg.well_width, cfg.target_clip,
                          cfg.clip_per_particle, cfg.clip_lift)

    @property
    def clip_options(self) -> dict:
        """How scores are clipped (`estimators.clip_bound`): keywords of `estimate_target`."""
        cfg = self.config
        return dict(clip=cfg.target_clip, clip_per_particle=cfg.clip_per_particle,
                    clip_lift=cfg.clip_lift, clip_length=cfg.well_width)

    def differentiable_score(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The model's score `(batch, dim)` at `(batch, dim)` scaled positions and `(batch,)` times,
        with its graph: the network, plus the force prior when the config has one."""
        net, prior = self.net, self.force_prior
        return net if prior is None else (lambda x, t: net(x, t) + prior(x, t))

    def score_fn(self, generator: torch.Generator | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """The score used for sampling, in scaled coordinates: the network (plus the force prior
        when the config has one), or in `direct` mode the MC estimate of Eq. 7."""
        if self.config.mode == "direct":
            energy, space, sde, cfg = self.scaled_energy, self.space, self.sde, self.config
            return lambda x, t: estimate_target(energy, x, sde.sigma(t), cfg.n_mc, space, **self.clip_options,
                                                blend_length=cfg.blend_length,
                                                generator=generator).score
        net, prior = self.net, self.force_prior

        def score(x, t):
            with torch.no_grad():
                s = net(x, t)
            return s if prior is None else s + prior(x, t)

        return score

    def sample(self, n: int, steps: int | None = None, method: str = "sde", seed: int | None = None,
               batch: int = 10_000) -> Tensor:
        """`(n, dim)` samples in the energy's coordinates (float32). Non-finite rows (a diverged
        integration) are kept, counted and warned about, never dropped silently.

        Args:
            steps: integration steps (default: the config's `sample_steps`).
            method: "sde" (reverse SDE, Euler–Maruyama) or "ode" (probability flow, Heun).
            seed: seed of the prior draw and the SDE noise.
            batch: samples integrated at once.
        """
        if method not in ("sde", "ode"):
            raise ValueError(f"method must be 'sde' or 'ode', got {method!r}")
        steps = self.config.sample_steps if steps is None else steps
        for name, value, least in (("n", n, 0), ("steps", steps, 1), ("batch", batch, 1)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if n == 0:
            return torch.empty(0, self.space.dim, device=self.config.device)
        g = torch.Generator(device=self.config.device)
        g.manual_seed(self.config.seed + 1 if seed is None else seed)
        out = []
        for start in range(0, n, batch):
            m = min(batch, n - start)
            x = self.sde.prior_sample(m, self.space, device=self.config.device, generator=g)
            if method == "sde":
                x = reverse_sde(self.score_fn(g), self.sde, self.space, x, steps, generator=g)
            else:
                x = probability_flow(self.score_fn(g), self.sde, self.space, x, steps)
            out.append(x * self.config.scale)
        x = torch.cat(out)
        bad = int((~torch.isfinite(x).all(dim=1)).sum())
        if bad:
            warnings.warn(f"{bad} of {n} samples are non-finite (the score diverged along the reverse SDE): they "
                          "are returned as they are; drop them with x[torch.isfinite(x).all(1)], and train longer "
                          "or integrate with more steps", RuntimeWarning, stacklevel=2)
        return x

    def _likelihood_setup(self, steps, seed, batch) -> tuple[Callable, int, torch.Generator, torch.dtype]:
        """(differentiable score, steps, generator, dtype) for `log_prob` and `importance_sample`."""
        if self.net is None:
            raise ValueError(f"likelihoods need a network score; a sampler in mode {self.config.mode!r} has none (the "
                             "Monte Carlo score of 'direct' mode is not differentiable): train a network")
        steps = self.config.sample_steps if steps is None else steps
        for name, value in (("steps", steps), ("batch", batch)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        g = torch.Generator(device=self.config.device)
        g.manual_seed(self.config.seed + 1 if seed is None else seed)
        dtype = next(self.net.parameters()).dtype
        if self.force_prior is not None:
            self.force_prior.require_second_derivatives(self.sde.prior_sample(1, self.space, dtype, self.config.device))
        return self.differentiable_score(), int(steps), g, dtype

    def log_prob(self, x: Tensor, steps: int | None = None, divergence: str = "exact", n_probes: int = 1,
                 seed: int | None = None, batch: int = 10_000) -> Tensor:
        """Log density `(n,)` of the sampler's probability-flow ODE at `x` `(n, dim)`, in the
        energy's coordinates: log of 1/(length unit)^effective_dim, the density on the
        centre-of-mass-free subspace for particle systems (see `iwsm_md.sampling.log_prob`).

        With `config.scale != 1` the ODE runs on `x / scale` and
        `log q(x) = log q_scaled(x / scale) − effective_dim · log(scale)`. This is the density of
        `sample(method="ode")`, not of the reverse SDE's samples (the two agree only as far as
        the network's score is a true score).

        Args:
            steps: Heun steps (default: the config's `sample_steps`); compare two values to see
                the discretisation error.
            divergence: "exact" (`effective_dim` backward passes per step: small systems) or
                "hutchinson" (`n_probes` backward passes per step; seed: of the probes).
            batch: points integrated at once.
        Returns float32 (the network's dtype) on the config's device; NaN where x is non-finite
        or the integration diverged.
        """
        score, steps, g, dtype = self._likelihood_setup(steps, seed, batch)
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.space.dim:
            raise ValueError(f"x must have shape (n, {self.space.dim}), got {tuple(x.shape)}")
        y = x.to(device=self.config.device, dtype=dtype) / self.config.scale
        out = [log_prob(score, self.sde, self.space, y[i:i + batch], steps, divergence=divergence, n_probes=n_probes,
                        generator=g) for i in range(0, len(y), batch)]
        log_q = torch.cat(out) if out else y.new_empty(0)
        return log_q - self.space.effective_dim * math.log(self.config.scale)

    def importance_sample(self, n: int, steps: int | None = None, divergence: str = "exact", n_probes: int = 1,
                          seed: int | None = None, batch: int = 10_000) -> ImportanceSample:
        """`n` samples of the probability-flow ODE with their log density, energies and
        importance weights p/q (`iwsm_md.reweighting`), in the energy's coordinates.

        One integration gives both the samples (those of `sample(n, steps, method="ode",
        seed=seed)` when `divergence="exact"`) and their log density (as `log_prob`, to
        O(1/steps²)). Observables: `reweighting.reweighted_mean(values, s.log_w)`; log Z:
        `reweighting.log_partition(-s.energy, s.log_q)`. Samples with a non-finite position,
        log q or energy are kept, masked (weight 0), counted in `n_masked` and warned about.
        Arguments as in `log_prob` and `sample`.
        """
        score, steps, g, dtype = self._likelihood_setup(steps, seed, batch)
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        xs, log_qs, energies = [], [], []
        for start in range(0, n, batch):
            x1 = self.sde.prior_sample(min(batch, n - start), self.space, dtype=dtype, device=self.config.device,
                                       generator=g)
            x0, log_q = sample_with_log_prob(score, self.sde, self.space, x1, steps, divergence=divergence,
                                             n_probes=n_probes, generator=g)
            x0 = x0 * self.config.scale
            energy = torch.full((len(x0),), math.nan, dtype=torch.float64, device=x0.device)
            finite = torch.isfinite(x0).all(1)
            if finite.any():
                with torch.no_grad():
                    energy[finite] = self.energy(x0[finite]).double()
            xs.append(x0)
            log_qs.append(log_q.double() - self.space.effective_dim * math.log(self.config.scale))
            energies.append(energy)
        x, log_q, energy = torch.cat(xs), torch.cat(log_qs), torch.cat(energies)
        w = importance_weights(-energy, log_q)
        return ImportanceSample(x, log_q.cpu(), energy.cpu(), w.log_w, w.ess, w.n_masked)

    def save(self, path: str | Path, training: dict | None = None) -> None:
        """Write config, network, buffer, history and energy source to `path`, atomically
        (a temporary file, then a rename); `iwsm_md.load(path)` reads it back. `training`: the
        optimizer and random-number state of a run in progress (`fit` writes it in checkpoints)."""
        path = Path(path)
        state = {
            "format": "iwsm_md.sampler/1",
            "config": dataclasses.asdict(self.config),
            "net": self.net.state_dict() if self.net is not None else None,
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "history": self.history,
            "source": self.source,
            "energy": energy_spec(self.energy),
            "training": training,
        }
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the checkpoint
        tmp.replace(path)


def energy_spec(energy: Energy) -> dict:
    """What a saved sampler records of its energy, to refuse loading it with another one."""
    return {"n_particles": energy.n_particles, "spatial_dim": energy.spatial_dim,
            "translation_invariant": bool(energy.translation_invariant), "length_unit": energy.length_unit}


def check_compatible(state: dict, energy: Energy, what: str = "the sampler file") -> None:
    """ValueError naming both shapes when `energy` is not the kind of energy `state` was trained on:
    another number of particles, spatial dimension, translation invariance or length unit."""
    saved, now = state.get("energy"), energy_spec(energy)
    if saved is None:  # files written before the energy was recorded: the buffer knows the dim
        buffer = state.get("buffer")
        if buffer is None:
            return
        dim = int(buffer["data"].shape[1])
        if dim != energy.dim:
            raise ValueError(f"dimension mismatch: {what} was trained on an energy of dim {dim}, but the energy given "
                             f"has {energy.n_particles} particle(s) x {energy.spatial_dim} dims (dim {energy.dim}): "
                             "pass the energy it was trained on")
        return

    def shape(spec):
        return (f"{spec['n_particles']} particle(s) x {spec['spatial_dim']} dims "
                f"(dim {spec['n_particles'] * spec['spatial_dim']})")

    if (saved["n_particles"], saved["spatial_dim"]) != (now["n_particles"], now["spatial_dim"]):
        raise ValueError(f"dimension mismatch: {what} was trained on an energy of {shape(saved)}, but the energy given "
                         f"has {shape(now)}: pass the energy it was trained on")
    # what matters is the sample space: centre-of-mass free for invariant energies of > 1 particle
    saved_free, now_free = (s["translation_invariant"] and s["n_particles"] > 1 for s in (saved, now))
    if saved_free != now_free:
        raise ValueError(f"{what} was trained on a {'' if saved_free else 'non-'}translation-invariant energy, the "
                         f"energy given is {'' if now_free else 'not '}translation invariant: pass the energy it was "
                         "trained on")
    if None not in (saved["length_unit"], now["length_unit"]) and saved["length_unit"] != now["length_unit"]:
        raise ValueError(f"{what} was trained on an energy in {saved['length_unit']}, the energy given is in "
                         f"{now['length_unit']}: pass the energy it was trained on")


def build_net(space: Space, config: TrainConfig) -> torch.nn.Module:
    """The score network a config describes, for samples of `space`."""
    kind = config.net if config.net != "auto" else ("mlp" if space.n_particles == 1 else "egnn")
    if kind == "mlp":
        net = MLPScore(space.dim, config.hidden, config.layers)
    elif kind == "egnn":
        net = EGNNScore(space.n_particles, space.spatial_dim, config.hidden, config.layers)
    else:
        from iwsm_md.nets import E3NNScore

        net = E3NNScore(space.n_particles, space.spatial_dim, layers=config.layers)
    return NoiseScaled(net, GeometricVESDE(config.sigma_min, config.sigma_max)) if config.noise_scaled else net


def fit(energy: Energy, config: TrainConfig, log: Callable[[dict], None] | None = None, *,
        source: dict | None = None, checkpoint: str | Path | None = None, checkpoint_every: int = 100,
        resume: bool = False) -> Sampler:
    """Train a sampler of `exp(−energy)` with `config`; returns the `Sampler`.

    Launched by torchrun with several processes, it trains data-parallel (`iwsm_md.distributed`):
    each rank evaluates its share of the batch, gradients are averaged, and every rank returns the
    same sampler; only rank 0 writes the checkpoint, which a run with the same number of
    processes resumes.

    Args:
        log: receives one dict per epoch: epoch, gradient steps so far, loss, weight ESS
            fraction, inner ESS, count of masked non-finite energies (`n_nonfinite`), count of
            steps skipped for a non-finite gradient (`n_skipped`), buffer size, wall time (s);
            an epoch cut short by `max_minutes` is logged with `partial: True`. Under torchrun, only
            rank 0 calls it (every rank's history holds the same entries).
        source: how to rebuild the energy on load (see `iwsm_md.api`), stored with the sampler.
        checkpoint: file written every `checkpoint_every` gradient steps and at the end, atomically
            (a temporary file, then a rename: a write cut short never replaces the last good one).
            It is a sampler file (`iwsm_md.load` reads it) that also holds the optimizer, the
            random-number state and the position in the run.
        resume: continue from `checkpoint` if it exists (the config must match but for `epochs`
            and `max_minutes`); a run resumed from a checkpoint repeats nothing and loses at most
            `checkpoint_every` steps.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be an iwsm_md.TrainConfig, got {type(config).__name__}: build one with "
                        "TrainConfig(...) or TrainConfig.published(name)")
    problem = device_problem(config.device)
    if problem is not None:
        raise ValueError(problem)
    device = distributed.init_from_env(config.device)
    if device != config.device:  # "cuda" on rank r of a torchrun launch: cuda:<LOCAL_RANK>
        config, energy = dataclasses.replace(config, device=device), energy.to(device)
    n_ranks, rank = distributed.world_size(), distributed.rank()
    torch.manual_seed(config.seed)
    g = torch.Generator(device=config.device)  # the batch's draws: the same on every rank
    g.manual_seed(config.seed)
    g_local = g  # this rank's own draws: its share of the buffer refills
    if n_ranks > 1:
        g_local = torch.Generator(device=config.device)
        g_local.manual_seed(config.seed + 1_000_003 * (rank + 1))
    dev = torch.device(config.device)
    space = Space.of(energy)
    sde = GeometricVESDE(config.sigma_min, config.sigma_max)
    if config.mode == "direct":
        return Sampler(energy, config, None, source=source)
    net = build_net(space, config).to(dev)  # the network the optimizer trains
    model = net
    if n_ranks > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    # the sampler's network: with ema_decay, a copy holding the moving average of the weights
    # (buffer refills and the returned sampler use it); else the trained network itself
    sampler = Sampler(energy, config, copy.deepcopy(net).requires_grad_(False) if config.ema_decay is not None else net,
                      source=source)
    averaged = list(sampler.net.parameters())
    target, prior = sampler.scaled_energy, sampler.force_prior
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    buffer = None
    if config.mode in ("iwsm", "idem"):
        buffer = ReplayBuffer(config.buffer_capacity, space.dim, device=dev)
        sampler.buffer = buffer
    n_copies = config.snis_n if config.mode == "iwsm" else 1
    n_groups = config.batch_size // n_copies
    if n_groups < n_ranks:
        raise ValueError(f"a batch of {n_groups} (x_0, t) groups cannot be shared by {n_ranks} processes: use a "
                         f"batch_size of at least {n_ranks * n_copies} or fewer processes")
    mine = distributed.share(n_groups)  # this rank's groups, and their rows of the batch:
    rows = slice(mine.start * n_copies, mine.stop * n_copies)
    n_rows = n_groups * n_copies
    step, stats, elapsed = 0, _new_stats(), 0.0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        step, stats, elapsed = _resume(sampler, net, optimizer, g, g_local, checkpoint)
    elif buffer is not None:
        buffer.add(sde.prior_sample(config.samples_per_epoch, space, device=dev, generator=g))
    started = time.perf_counter() - elapsed
    total = config.epochs * config.steps_per_epoch
    while step < total:
        epoch, within = divmod(step, config.steps_per_epoch)
        if within == 0 and buffer is not None and epoch > 0:
            net.eval()
            part = distributed.share(config.samples_per_epoch)
            x = sde.prior_sample(part.stop - part.start, space, device=dev, generator=g_local)
            x = reverse_sde(sampler.score_fn(), sde, space, x, config.sample_steps, generator=g_local)
            buffer.add(distributed.gather(x, config.samples_per_epoch))
        net.train()
        x0 = buffer.sample(n_groups, g) if buffer is not None else \
            sde.prior_sample(n_groups, space, device=dev, generator=g)
        t = torch.rand(n_groups, device=dev, generator=g)
        x0r, tr = x0.repeat_interleave(n_copies, 0), t.repeat_interleave(n_copies)
        x_t = sde.perturb(x0r, tr, space, generator=g)
        sigma = sde.sigma(tr)
        est = estimate_target(target, x_t, sigma, config.n_mc, space, **sampler.clip_options,
                              blend_length=config.blend_length,
                              generator=g, rows=rows)
        if config.mode == "iwsm":
            log_q = proposal_log_density(x_t, x0, sigma, space)
            log_p = distributed.gather(est.log_p.reshape(-1, n_copies), n_groups).reshape(-1)  # by (x_0, t) groups
            iw = snis_weights(log_p, log_q, n_copies if config.snis_normalise == "group" else None, config.snis_power)
            w = iw.weights.float()[rows]
            stats["weight_ess"] += iw.ess_fraction
        else:
            w = est.valid.float()
        residual = model(x_t[rows], tr[rows]) - est.score.float()
        if prior is not None:
            residual = residual + prior(x_t[rows], tr[rows])
        lam = LOSS_WEIGHTS[config.loss_weight](sigma[rows]) + config.loss_floor
        # this rank's rows' sum, scaled so that the mean over ranks (DDP averages gradients) is the batch mean
        loss = (w * lam * (residual * residual).sum(-1)).sum() * (n_ranks / n_rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        if torch.isfinite(grad_norm):
            optimizer.step()
            if config.ema_decay is not None:
                with torch.no_grad():
                    for a, p in zip(averaged, net.parameters()):
                        a.lerp_(p, 1.0 - config.ema_decay)
        else:  # one non-finite gradient would poison the parameters and Adam's moments for good
            stats["n_skipped"] += 1
        step += 1
        elapsed = time.perf_counter() - started
        loss_sum, ess_sum, n_bad, late = distributed.totals([
            loss.item() / n_ranks, est.inner_ess.sum().item(), est.n_nonfinite,
            config.max_minutes is not None and elapsed > 60 * config.max_minutes])
        stats["loss"] += loss_sum
        stats["inner_ess"] += ess_sum / n_rows
        stats["n_nonfinite"] += int(n_bad)
        out_of_time = late > 0  # on every rank when on any: the ranks stop together
        if step % config.steps_per_epoch == 0 or out_of_time:
            n = within + 1
            entry = {"epoch": epoch, "step": step, "loss": stats["loss"] / n,
                     "weight_ess": stats["weight_ess"] / n if config.mode == "iwsm" else math.nan,
                     "inner_ess": stats["inner_ess"] / n, "n_nonfinite": stats["n_nonfinite"],
                     "n_skipped": stats["n_skipped"],
                     "buffer": len(buffer) if buffer is not None else 0, "seconds": elapsed}
            if step % config.steps_per_epoch:  # cut short by max_minutes: a resumed run completes it
                entry["partial"] = True
            else:
                stats = _new_stats()
            sampler.history.append(entry)
            if log is not None and rank == 0:
                log(entry)
        if checkpoint is not None and (step % checkpoint_every == 0 or step == total or out_of_time):
            local = distributed.gather_objects(g_local.get_state()) if n_ranks > 1 else None
            if rank == 0:
                trained = net.state_dict() if net is not sampler.net else None  # the averaged one is "net"
                sampler.save(checkpoint, training={"step": step, "stats": stats, "seconds": elapsed,
                                                   "optimizer": optimizer.state_dict(), "generator": g.get_state(),
                                                   "local_generators": local, "torch_rng": torch.get_rng_state(),
                                                   "trained_net": trained})
        if out_of_time:
            break
    sampler.net.eval()
    return sampler


def _new_stats() -> dict:
    return {"loss": 0.0, "weight_ess": 0.0, "inner_ess": 0.0, "n_nonfinite": 0, "n_skipped": 0}


def _resume(sampler: Sampler, net: torch.nn.Module, optimizer: torch.optim.Optimizer, g: torch.Generator,
            g_local: torch.Generator, path) -> tuple[int, dict, float]:
    """Load a training checkpoint into `sampler`, the trained `net` (the sampler's own unless
    weights are averaged), `optimizer` and the generators (the shared `g`, this rank's
    `g_local`); returns (step, stats, seconds)."""
    state = read_state(path)
    if state.get("training") is None:
        raise ValueError(f"{path} is a finished sampler, not a training checkpoint: nothing to resume")
    check_compatible(state, sampler.energy, f"checkpoint {path}")
    local = state["training"].get("local_generators")
    n_ranks = distributed.world_size()
    if (len(local) if local is not None else 1) != n_ranks:
        raise ValueError(f"checkpoint {path} was written by a run of {len(local) if local else 1} process(es); "
                         f"resume it with the same number (this run has {n_ranks})")
    free = ("epochs", "max_minutes", "device")  # a run may go on longer, or on another device
    saved = {k: v for k, v in state["config"].items() if k not in free}
    now = {k: v for k, v in dataclasses.asdict(sampler.config).items() if k not in free}
    changed = sorted(k for k in now if saved.get(k) != now[k])
    if changed:
        raise ValueError(f"checkpoint {path} was written with another config (differs in {changed}); "
                         "resume with the same settings or start a new run")
    sampler.net.load_state_dict(state["net"])
    if net is not sampler.net:
        net.load_state_dict(state["training"]["trained_net"])
    if sampler.buffer is not None:
        sampler.buffer.load_state_dict(state["buffer"])
    sampler.history[:] = [h for h in state["history"] if not h.get("partial")]  # the epoch goes on
    train = state["training"]
    optimizer.load_state_dict(train["optimizer"])
    g.set_state(train["generator"])
    if local is not None:
        g_local.set_state(local[distributed.rank()])
    torch.set_rng_state(train["torch_rng"])
    return int(train["step"]), {**_new_stats(), **train["stats"]}, float(train["seconds"])


def read_state(path: str | Path) -> dict:
    """The dict a sampler file or training checkpoint holds; ValueError naming the file if it
    is unreadable or not an iwsm_md sampler."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot read sampler checkpoint {path}: "
                         + ("it is a directory" if path.is_dir() else "no such file") + "; check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign files raise many types (zip, pickle, EOF, import errors)
        raise ValueError(f"cannot read sampler checkpoint {path} ({type(err).__name__}: {err}): the file is damaged "
                         "or not written by iwsm_md; use another checkpoint or train again") from err
    if not isinstance(state, dict) or state.get("format") != "iwsm_md.sampler/1":
        raise ValueError(f"{path} is not an iwsm_md sampler checkpoint (no 'iwsm_md.sampler/1' format tag): "
                         "pass a file written by Sampler.save or by training with a checkpoint")
    missing = sorted({"config", "net", "buffer", "history", "source"} - set(state))
    if missing:
        raise ValueError(f"sampler checkpoint {path} is damaged: it lacks {missing}; use another checkpoint or "
                         "train again")
    return state


def restore(state: dict, energy: Energy) -> Sampler:
    """Rebuild a `Sampler` from a saved state dict and its energy.

    ValueError if `energy` is not the kind of energy the sampler was trained on (another number
    of particles or spatial dimension: see `check_compatible`). A sampler saved on a device this
    machine lacks (a GPU) is loaded on the CPU, with a warning."""
    check_compatible(state, energy)
    values = dict(state["config"])
    problem = device_problem(values.get("device", "cpu"))
    if problem is not None:
        warnings.warn(f"the sampler was saved on {values['device']!r}, which is not usable here: loading it on "
                      f"the CPU ({problem})", stacklevel=2)
        values["device"] = "cpu"
    config = TrainConfig.from_dict(values)
    space = Space.of(energy)
    net = None
    if state["net"] is not None:
        net = build_net(space, config)
        try:
            net.load_state_dict(state["net"])
        except RuntimeError as err:
            raise ValueError(f"the saved network does not fit the net its config describes ({err}); the file was "
                             "written for another energy or by another version of iwsm_md") from None
        net.to(config.device).eval()
    buffer = None
    if state["buffer"] is not None:
        buffer = ReplayBuffer(config.buffer_capacity, space.dim, device=config.device)
        buffer.load_state_dict(state["buffer"])
    return Sampler(energy, config, net, buffer, list(state["history"]), state["source"])
