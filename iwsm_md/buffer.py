"""The replay buffer of IWSM: a FIFO ring of the sampler's own past samples."""
from __future__ import annotations

import torch
from torch import Tensor


class ReplayBuffer:
    """FIFO buffer of at most `capacity` samples of shape `(dim,)`.

    `add` appends (overwriting the oldest once full), `sample` draws uniformly with
    replacement, and `state_dict` / `load_state_dict` save and restore it exactly.
    Non-finite samples are refused and counted (`n_rejected`), never stored.
    """

    def __init__(self, capacity: int, dim: int, dtype=torch.float32, device=None):
        if capacity < 1 or dim < 1:
            raise ValueError(f"capacity and dim must be positive, got {capacity}, {dim}")
        self.capacity, self.dim = int(capacity), int(dim)
        self.data = torch.empty(self.capacity, self.dim, dtype=dtype, device=device)
        self.size = 0
        self.head = 0  # next slot to write
        self.n_rejected = 0

    def __len__(self) -> int:
        return self.size

    def add(self, x: Tensor) -> int:
        """Append samples `(n, dim)`; returns how many were stored (finite rows only)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"buffer samples must have shape (n, {self.dim}), got {tuple(x.shape)}")
        finite = torch.isfinite(x).all(dim=1)
        self.n_rejected += int((~finite).sum())
        x = x[finite].detach().to(self.data)[-self.capacity:]
        n = x.shape[0]
        idx = (self.head + torch.arange(n, device=self.data.device)) % self.capacity
        self.data[idx] = x
        self.head = (self.head + n) % self.capacity
        self.size = min(self.capacity, self.size + n)
        return n

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n` samples `(n, dim)` drawn uniformly with replacement."""
        if self.size == 0:
            raise RuntimeError("the replay buffer is empty: fill it before sampling")
        idx = torch.randint(self.size, (n,), generator=generator, device=generator.device if generator else None)
        return self.data[idx.to(self.data.device)]

    def state_dict(self) -> dict:
        return {"data": self.data[: self.size].clone() if self.size < self.capacity else self.data.clone(),
                "size": self.size, "head": self.head, "capacity": self.capacity, "n_rejected": self.n_rejected}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity or state["data"].shape[1] != self.dim:
            raise ValueError(f"buffer state of capacity {state['capacity']} and dim {state['data'].shape[1]} does "
                             f"not fit a buffer of capacity {self.capacity} and dim {self.dim}")
        self.size, self.head, self.n_rejected = int(state["size"]), int(state["head"]), int(state["n_rejected"])
        self.data[: state["data"].shape[0]] = state["data"].to(self.data)
