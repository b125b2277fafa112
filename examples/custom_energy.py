"""Train a sampler of a target given as a plain PyTorch function of the coordinates.

    python3 examples/custom_energy.py [--minutes 3] [--fast]

The energy is any differentiable torch function from `(batch, dim)` positions to `(batch,)`
reduced energies E/kT; here a 2D ring-shaped density (a "donut" with two wells on it).
`iwsm_md.energies.from_function` wraps it, and the sampler is an MLP score net.
"""
import argparse

import torch

import iwsm_md
from iwsm_md.energies import from_function


def donut(x: torch.Tensor) -> torch.Tensor:
    """E/kT of a ring of radius 2 and width 0.2, with its left half 1 kT higher."""
    r = x.norm(dim=-1)
    return (r - 2.0) ** 2 / (2 * 0.2**2) + 0.5 * (1 - torch.tanh(5 * x[:, 0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--fast", action="store_true")
    args = parser.parse_args()
    settings = dict(sigma_min=1e-3, sigma_max=3.0, n_mc=20, blend_length=0.2, target_clip=70.0, lr=1e-3,
                    steps_per_epoch=50, sample_steps=100, samples_per_epoch=1000, epochs=100_000,
                    max_minutes=args.minutes)
    if args.fast:
        settings.update(batch_size=40, steps_per_epoch=2, sample_steps=10, samples_per_epoch=40, epochs=2, hidden=16)
    sampler = iwsm_md.train(from_function(donut, dim=2), **settings)
    x = sampler.sample(2000)
    r = x.norm(dim=-1)
    print(f"mean radius {r.mean():.3f} (ring at 2.0), fraction on the right {(x[:, 0] > 0).float().mean():.2f} "
          f"(exact: {1 / (1 + torch.exp(torch.tensor(-1.0))):.2f} for a 1 kT gap)")


if __name__ == "__main__":
    main()
