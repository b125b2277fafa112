"""A short training run for tests/test_distributed.py, launched as one process or by torchrun.

    python tests/distributed_worker.py OUT MODE NORMALISE
    torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py OUT MODE NORMALISE

Trains on a 3D Gaussian with a batch of 15 (x_0, t) groups (shared unevenly, 8 and 7, by two
processes) and writes OUT/rank<r>.pt: the loss and the gradients of every step (recorded where
`fit` clips them, after DDP has averaged them), the final parameters, the buffer and history.
"""
import sys
from pathlib import Path

import torch

from iwsm_md import TrainConfig, distributed
from iwsm_md.energies import from_function
from iwsm_md.training import fit

S = 0.7


def main() -> None:
    out, mode, normalise = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    energy = from_function(lambda x: (x * x).sum(-1) / (2 * S**2), dim=3)
    config = TrainConfig(mode=mode, snis_normalise=normalise, snis_n=2, batch_size=30 if mode == "iwsm" else 15,
                         n_mc=8, epochs=3, steps_per_epoch=4, samples_per_epoch=21, sample_steps=5,
                         buffer_capacity=200, hidden=16, layers=2, sigma_max=2.0, seed=3)
    steps = []
    clip = torch.nn.utils.clip_grad_norm_

    def record(params, max_norm, *args, **kwargs):
        params = list(params)
        steps.append([p.grad.detach().clone() for p in params])
        return clip(params, max_norm, *args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = record
    sampler = fit(energy, config)
    torch.save({"grads": steps, "params": [p.detach().clone() for p in sampler.net.parameters()],
                "buffer": sampler.buffer.state_dict() if sampler.buffer is not None else None, "history": sampler.history,
                "world_size": distributed.world_size()}, out / f"rank{distributed.rank()}.pt")


if __name__ == "__main__":
    main()
