"""Every collective the library issues goes through the door: a dead peer there is a ``PeerError``.

Without elastic training these used to reach the caller as Gloo's raw ``RuntimeError``
(``algorithm="allreduce"``, ``consensus_distance``, ``broadcast_parameters``); the elastic tests
(test_elastic.py) show the same failures recovered.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
import torch
from harness import run_ranks
from torch import nn

import saddle_torch as st


def _dead_peer_in_a_collective(rank: int, world: int, where: str) -> dict:
    ctx = st.init(topology="ring", timeout=timedelta(seconds=8))
    torch.manual_seed(0)
    model = nn.Linear(6, 2)
    opt = st.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, algorithm="allreduce")
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)  # one healthy exact step everywhere
    if rank == world - 1:
        os._exit(0)  # dies between two collectives
    t0 = time.monotonic()
    calls = {
        "allreduce": lambda: opt.step(closure),
        "consensus_distance": lambda: st.consensus_distance(model),
        "broadcast_parameters": lambda: st.broadcast_parameters(model.state_dict(), root_rank=0),
    }
    try:
        calls[where]()
    except st.SaddleError as e:
        return {
            "type": type(e).__name__,
            "runtime": isinstance(e, RuntimeError),
            "message": str(e),
            "elapsed": time.monotonic() - t0,
            "calls": ctx.door.calls,
            "errored": ctx.door.errored() is e,
        }
    return {"type": "no error"}


@pytest.mark.parametrize("where", ["allreduce", "consensus_distance", "broadcast_parameters"])
def test_a_dead_peer_in_a_library_collective_is_a_peer_error(where: str) -> None:
    world = 2  # the survivor talks to the dead rank directly: it learns at once, not at the timeout
    results = run_ranks(_dead_peer_in_a_collective, world, where, allow_missing={world - 1}, timeout=90)
    r = results[0]
    assert r["type"] == "PeerError" and r["runtime"], r
    assert "failed: a rank died" in r["message"] and r["errored"], r
    assert r["elapsed"] < 8.0 + 3.0, r
