"""Training and sampling throughput against batch size and K, split by phase.

    python3 benchmarks/throughput.py                 # every system, CPU and (when present) CUDA
    python3 benchmarks/throughput.py --systems gmm40 --quick

For each built-in system at its published settings (network, σ range, scale), and each batch size
B and number of noisy copies K of the grid, it times (best of `--repeats`, after a warm-up):
- energy: energies and forces of the B·K noisy copies of one step;
- estimator: the whole target estimate (`estimate_target`, the energies included);
- weights: IWSM's proposal density and self-normalised weights (`proposal_log_density`,
  `snis_weights`);
- network: forward, backward, gradient clipping and the Adam step on the B points;
- step: whole training steps of `training.fit` (mode iwsm, buffer filled from the prior, no
  refill), which adds the batch's draws and the bookkeeping;
- sampler: reverse-SDE samples per second at the config's number of steps (1000 published),
  from the time per integration step of a batch of `--sample-batch` samples.
Writes benchmarks/results/throughput.md (or `--output`).
"""
from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import torch

from common import hardware
from iwsm_md import TrainConfig
from iwsm_md.energies.base import ScaledEnergy
from iwsm_md.estimators import estimate_target, proposal_log_density, snis_weights
from iwsm_md.potentials import builtin_energy
from iwsm_md.sampling import reverse_sde
from iwsm_md.sde import GeometricVESDE, Space
from iwsm_md.training import build_net, fit

RESULTS = Path(__file__).parent / "results" / "throughput.md"
GRID = {"gmm40": ((128, 512), (20, 100, 500)), "dw4": ((128, 512), (100, 1000)),
        "lj13": ((128, 512), (50, 1000)), "lj55": ((32, 128), (20, 100))}
QUICK = {"gmm40": ((64,), (20,)), "dw4": ((64,), (20,)), "lj13": ((32,), (20,)), "lj55": ((8,), (10,))}
# Peak dense float32 rates of GPUs this may run on (vendor data sheets, non-tensor-core FP32), TFLOP/s.
PEAK_FP32 = {"H100": 67.0, "H200": 67.0, "A100": 19.5, "A40": 37.4}


def best(fn, repeats: int, device: torch.device) -> float:
    """Best wall time (s) of `fn()` over `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def phases(system: str, batch: int, k: int, device: torch.device, repeats: int, sample_batch: int) -> dict:
    """Seconds per call of each phase (and the sampler's samples/s) for one grid cell."""
    config = TrainConfig.published(system, batch_size=batch, n_mc=k, device=str(device))
    energy = builtin_energy(system).to(device)
    space, sde = Space.of(energy), GeometricVESDE(config.sigma_min, config.sigma_max)
    target = ScaledEnergy(energy, config.scale) if config.scale != 1.0 else energy
    g = torch.Generator(device=device).manual_seed(0)
    n_groups = batch // config.snis_n
    x0 = sde.prior_sample(n_groups, space, device=device, generator=g) * 0.3
    t = torch.rand(n_groups, device=device, generator=g).repeat_interleave(config.snis_n)
    x_t = sde.perturb(x0.repeat_interleave(config.snis_n, 0), t, space, generator=g)
    sigma = sde.sigma(t)
    copies = (x_t[:, None, :] + sigma[:, None, None] * space.noise(len(x_t), k, device=device, generator=g))
    copies = copies.reshape(-1, space.dim)
    chunk = max(1, (1 << 17) // k) * k  # the estimator's chunk of copies
    out = {"energy": best(lambda: [target.energy_and_forces(copies[i:i + chunk]) for i in range(0, len(copies), chunk)],
                          repeats, device)}

    def estimate():
        return estimate_target(target, x_t, sigma, k, space, clip=config.target_clip,
                               clip_per_particle=config.clip_per_particle, generator=g)

    out["estimator"] = best(estimate, repeats, device)
    log_p = estimate().log_p
    out["weights"] = best(lambda: snis_weights(log_p, proposal_log_density(x_t, x0, sigma, space), config.snis_n),
                          repeats, device)
    net = build_net(space, config).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    score = torch.zeros_like(x_t)

    def train_net():
        loss = ((net(x_t, t) - score) ** 2).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        optimizer.step()

    out["network"] = best(train_net, repeats, device)
    steps = max(2, repeats)
    run = TrainConfig.published(system, batch_size=batch, n_mc=k, device=str(device), epochs=1, steps_per_epoch=steps,
                                samples_per_epoch=max(n_groups, 256), buffer_capacity=max(n_groups, 256))
    fit(energy, run)  # warm-up
    out["step"] = best(lambda: fit(energy, run), 1, device) / steps
    net.eval()
    xs = sde.prior_sample(sample_batch, space, device=device, generator=g)

    def integrate():
        with torch.no_grad():
            reverse_sde(lambda x, tt: net(x, tt), sde, space, xs, 10, generator=g)

    per_step = best(integrate, repeats, device) / 10
    out["samples/s"] = sample_batch / (per_step * config.sample_steps)
    out["sample_steps"] = config.sample_steps
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", nargs="*", default=list(GRID))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sample-batch", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="one small cell per system: a smoke test, not a measurement")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args()
    grid = QUICK if args.quick else GRID
    args.output.parent.mkdir(parents=True, exist_ok=True)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    lines = ["# Training and sampling throughput", "",
             f"Generated by `python3 benchmarks/throughput.py{' --quick' if args.quick else ''}` (see its docstring) on "
             f"{datetime.date.today().isoformat()}. Hardware: {hardware()}.", "",
             "Published settings of each system (network, σ range, scale, SNIS-n) with the batch B and noisy copies K "
             "of the row. Phases in milliseconds per training step (best of "
             f"{args.repeats}); energy is part of estimator; step is a whole `fit` step. Sampler: reverse-SDE samples/s "
             f"at the published 1000 steps, batch {args.sample_batch}.", ""]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak = next((v for key, v in PEAK_FP32.items() if key in name), None)
        lines += [f"GPU: {name}; peak FP32 (data sheet): {f'{peak} TFLOP/s' if peak else 'not listed'}.", ""]
    else:
        lines += ["No GPU on this machine: the CUDA rows are owed to a run on one.", ""]
    lines += ["| system | device | B | K | energy evals/s | energy | estimator | weights | network | step | steps/s "
              "| sampler samples/s |", "|---" * 12 + "|"]
    for system in args.systems:
        batches, ks = grid[system]
        for device in devices:
            for b in batches:
                for k in ks:
                    r = phases(system, b, k, device, args.repeats, args.sample_batch)
                    ms = {key: f"{1000 * r[key]:.1f}" for key in ("energy", "estimator", "weights", "network", "step")}
                    row = (f"| {system} | {device.type} | {b} | {k} | {b * k / r['energy']:,.0f} | {ms['energy']} | "
                           f"{ms['estimator']} | {ms['weights']} | {ms['network']} | {ms['step']} | {1 / r['step']:.2f} "
                           f"| {r['samples/s']:.3g} |")
                    lines.append(row)
                    print(row, flush=True)
                    args.output.write_text("\n".join(lines) + "\n")  # each row as it is measured


if __name__ == "__main__":
    main()
