"""Asynchronous gossip (``max_staleness``) with real ranks: a slow rank sets no one's pace, the mean stays.

Four ranks on a ring, rank 3 sleeping 20 ms in every step (a straggler), all training for the same
3 s of wall time (pure gossip: learning rate 0, different starting models). The fast ranks take
their steps without waiting for rank 3 (many times more of them), and after ``opt.drain()`` the
w-weighted mean of the four models is the mean they started from (the drift, measured) and the
models agree with it.
"""

from __future__ import annotations

import time
import warnings
from datetime import timedelta

import torch
from harness import run_ranks
from torch import nn

import saddle_torch as st
from saddle_torch.optim.mixing import PushSumGossip

SECONDS, SLOW, SLEEP = 3.0, 3, 0.02


def _async_gossip(rank: int, world: int) -> dict:
    ctx = st.init(topology="ring", timeout=timedelta(seconds=120))
    torch.manual_seed(rank)  # different models: gossip has something to average
    model = nn.Linear(20, 5)
    start = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.DifferentStartWarning)
        opt = st.DistributedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.0), model, algorithm="dsgd", max_staleness=float("inf")
        )
    ctx.door.agree([0], what="start together")
    steps, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < SECONDS:
        if rank == SLOW:
            time.sleep(SLEEP)
        opt.zero_grad()
        opt.step()
        steps += 1
    opt.drain()
    ps = next(iter(opt.saddle.phase(PushSumGossip)._sums.values()))
    end = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    w = ps.w
    opt.drain(average=True)  # every model becomes the weighted average, weights back to 1
    averaged = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    out = {"start": start, "end": end, "w": w, "steps": steps, "applied": dict(ps.applied)}
    return out | {"averaged": averaged}


def test_a_straggler_sets_no_ones_pace_and_the_mean_does_not_drift() -> None:
    res = run_ranks(_async_gossip, 4, timeout=300)
    start = torch.stack([res[r]["start"] for r in range(4)])
    end = torch.stack([res[r]["end"] for r in range(4)])
    w = torch.tensor([res[r]["w"] for r in range(4)], dtype=torch.float64)
    mean0 = start.double().mean(0)
    weighted = (w[:, None] * end.double()).sum(0) / w.sum()
    drift = float((weighted - mean0).norm() / mean0.norm())
    assert drift < 1e-5, drift
    assert abs(float(w.sum()) - 4) < 1e-4, w
    spread = float((end.double() - weighted).norm() / (start.double() - mean0).norm())
    assert spread < 1e-2, spread  # the models came together, the straggler's too
    for r in range(4):
        torch.testing.assert_close(res[r]["averaged"].double(), weighted, rtol=0, atol=1e-6)
    slow = res[SLOW]["steps"]
    assert slow <= SECONDS / SLEEP
    for r in (0, 1, 2):  # the fast ranks did not wait for rank 3
        assert res[r]["steps"] > 5 * slow, (r, res[r]["steps"], slow)
    assert res[0]["applied"][SLOW] > 0 and res[SLOW]["applied"][0] > 0  # and it still gossiped
