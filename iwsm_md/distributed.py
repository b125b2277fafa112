"""Data-parallel training with `torch.distributed`: who this process is, its share of a batch,
and the collectives the training loop needs. One process (no process group) is world size 1,
where every function here is the identity.

Launch with torchrun, e.g. `torchrun --nproc_per_node=2 -m iwsm_md.cli train dw4 ...` or a
script that calls `iwsm_md.train`: `fit` joins the process group that torchrun's environment
describes (NCCL when the config's device is CUDA, gloo on CPUs), and each rank then
- draws the mini-batch's buffer samples, times, noised points and the target estimate's noisy
  copies from a generator seeded the same on every rank (random numbers are cheap next to
  energies), so that its share of the batch is exactly that share of one process's batch,
- evaluates the expensive part only for its contiguous share of the batch's (x_0, t) groups:
  the K energy evaluations of the target estimate, and the network's forward and backward pass,
- gathers the estimates' log densities so that importance weights are normalised over the
  same groups as in one process, and lets DistributedDataParallel average the gradients
  (a step's loss and gradients equal one process's on the same batch);
- refills the buffer with its share of the reverse-SDE samples, gathered onto every rank in
  rank order, so that every rank's buffer stays identical.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


def active() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank; before the process group is joined, the one torchrun gives (RANK)."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def init_from_env(device: str) -> str:
    """Join the process group torchrun's environment describes (WORLD_SIZE > 1), once, with NCCL
    for a CUDA `device` and gloo otherwise; returns the device this rank uses (`cuda` becomes
    `cuda:<LOCAL_RANK>`). Without torchrun's environment it does nothing and returns `device`."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    dev = torch.device(device)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    if dev.type == "cuda" and dev.index is None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def share(n: int, of_rank: int | None = None) -> slice:
    """The contiguous share of `n` items of this rank (or of rank `of_rank`): the first
    `n % world_size` ranks take one more."""
    w, r = world_size(), rank() if of_rank is None else of_rank
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))


def gather(x: Tensor, n: int) -> Tensor:
    """Concatenate every rank's `x`, its `share(n)` of `n` rows (same trailing shape), along dim 0
    in rank order: the `n` rows of the whole."""
    if not active():
        return x
    sizes = [share(n, r).stop - share(n, r).start for r in range(world_size())]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def totals(values: list[float]) -> list[float]:
    """Each number summed over the ranks, in one all-reduce (float64)."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
