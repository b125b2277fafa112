"""Data-parallel training (`iwsm_md.distributed`): two CPU processes with gloo, launched by
torchrun, against one process on the same data.

Every random draw of a batch comes from a generator seeded alike on every rank, so the batches
of the first epoch (before the first buffer refill, which each rank draws for its own share)
are the same in both runs: each step's loss and gradients must match one process's. In `pdem`
mode (no buffer) the whole run must match. Within the two-process run, both ranks must end with
the same parameters, buffer and history.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed

WORKER = Path(__file__).with_name("distributed_worker.py")
STEPS_PER_EPOCH, EPOCHS = 4, 3

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend")


def plain(history: list[dict]) -> str:
    """A history's entries without their wall times, as text (NaN == NaN)."""
    return repr([{k: v for k, v in h.items() if k != "seconds"} for h in history])


def run(out: Path, mode: str, normalise: str, processes: int) -> list[dict]:
    out.mkdir()
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    done = subprocess.run([*launcher, str(WORKER), str(out), mode, normalise], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(processes)]


@pytest.mark.parametrize("mode, normalise", [("idem", "group"), ("iwsm", "group"), ("iwsm", "batch"), ("pdem", "group")])
def test_two_gloo_processes_match_one(tmp_path, mode, normalise):
    (one,) = run(tmp_path / "one", mode, normalise, 1)
    two = run(tmp_path / "two", mode, normalise, 2)
    assert one["world_size"] == 1 and [r["world_size"] for r in two] == [2, 2]
    # the ranks agree exactly: parameters, every step's averaged gradients, buffer and history
    r0, r1 = two
    assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))
    assert all(torch.equal(a, b) for s0, s1 in zip(r0["grads"], r1["grads"]) for a, b in zip(s0, s1))
    assert plain(r0["history"]) == plain(r1["history"])
    if mode != "pdem":
        assert r0["buffer"]["size"] == r1["buffer"]["size"] == one["buffer"]["size"]
        assert torch.equal(r0["buffer"]["data"], r1["buffer"]["data"])
    # and match one process on the same batches
    same = STEPS_PER_EPOCH * (EPOCHS if mode == "pdem" else 1)
    assert len(one["grads"]) == len(r0["grads"]) == STEPS_PER_EPOCH * EPOCHS
    for step in range(same):
        for a, b in zip(one["grads"][step], r0["grads"][step]):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    for h1, h2 in zip(one["history"][:same // STEPS_PER_EPOCH], r0["history"]):
        assert h2["loss"] == pytest.approx(h1["loss"], rel=1e-5)
        assert h2["inner_ess"] == pytest.approx(h1["inner_ess"], rel=1e-9)
        if mode == "iwsm":
            assert h2["weight_ess"] == pytest.approx(h1["weight_ess"], rel=1e-9)
    if mode == "pdem":
        for a, b in zip(one["params"], r0["params"]):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
