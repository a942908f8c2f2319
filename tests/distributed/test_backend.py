"""The torch.distributed backend "saddle" with real processes over Gloo."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from harness import run_ranks
from test_training import _data, _model, ddp_losses
from torch import nn

import saddle_torch as st


def _x(rank: int) -> torch.Tensor:
    return torch.randn(1001, generator=torch.Generator().manual_seed(rank), dtype=torch.float64)


def _collectives(rank: int, world: int) -> dict:
    st.backend.configure(topology="ring")
    dist.init_process_group("saddle", timeout=timedelta(seconds=60))
    out = {"backend": dist.get_backend()}
    x = _x(rank)
    dist.all_reduce(x, op=dist.ReduceOp.AVG)
    W = st.topology.ring(world).mixing_matrix()
    ref = W @ torch.stack([_x(r) for r in range(world)])
    out["avg_error"] = float((x - ref[rank]).norm() / ref[rank].norm())
    n = torch.tensor([rank + 1])
    dist.all_reduce(n)  # integer SUM: exact, delegated
    out["int_sum"] = int(n)
    f = torch.full((3,), float(rank))
    dist.all_reduce(f, op=dist.ReduceOp.MAX)
    out["max"] = f.tolist()
    b = torch.full((4,), float(rank))
    dist.broadcast(b, src=2)
    out["broadcast"] = b.tolist()
    gathered = [torch.empty(2) for _ in range(world)]
    dist.all_gather(gathered, torch.full((2,), float(rank)))
    out["allgather"] = [t.tolist() for t in gathered]
    dist.barrier()
    h = dist.all_reduce(_x(rank), op=dist.ReduceOp.AVG, async_op=True)
    out["future_len"] = len(h.get_future().wait())
    out["stats"] = st.backend.gossip_stats()
    dist.destroy_process_group()
    return out


def test_saddle_backend_gossips_avg_and_delegates_everything_else() -> None:
    world = 4
    for r in run_ranks(_collectives, world).values():
        assert r["backend"] == "saddle"
        assert r["avg_error"] < 1e-12, r
        assert r["int_sum"] == sum(range(1, world + 1))
        assert r["max"] == [world - 1.0] * 3
        assert r["broadcast"] == [2.0] * 4
        assert r["allgather"] == [[float(q)] * 2 for q in range(world)]
        assert r["future_len"] == 1
        assert r["stats"]["rounds"] == 2


def _ddp(rank: int, world: int, gossip_sum: bool) -> dict:
    st.backend.configure(topology="ring", gossip_sum=gossip_sum)
    dist.init_process_group("saddle", timeout=timedelta(seconds=60))
    ddp = nn.parallel.DistributedDataParallel(_model())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(60):
        x, y = _data(rank, 32, step + 1)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    params = torch.cat([p.detach().reshape(-1) for p in ddp.parameters()])
    every = [torch.empty_like(params) for _ in range(world)]
    dist.all_gather(every, params)
    spread = max(float((e - every[0]).abs().max()) for e in every)
    out = {"start": sum(losses[:5]) / 5, "end": sum(losses[-5:]) / 5, "spread": spread}
    out["rounds"] = st.backend.gossip_stats()["rounds"]
    dist.destroy_process_group()
    return out


@pytest.mark.parametrize("gossip_sum", [False, True])
def test_unmodified_ddp_loop_runs_on_the_saddle_backend(gossip_sum: bool) -> None:
    for rank, r in run_ranks(_ddp, 4, gossip_sum).items():
        assert r["end"] < 0.5 * r["start"], (rank, r)
        if gossip_sum:
            assert r["rounds"] > 0 and r["spread"] > 0  # gradients were gossiped: models differ a little
        else:
            assert r["rounds"] == 0 and r["spread"] == 0.0  # exact all-reduce: identical models


def _killed(rank: int, world: int, victim: int, timeout_s: float) -> dict:
    st.backend.configure(topology="ring")
    dist.init_process_group("saddle", timeout=timedelta(seconds=timeout_s))
    x = torch.ones(1000)
    dist.all_reduce(x, op=dist.ReduceOp.AVG)
    if rank == victim:
        os._exit(3)
    t0 = time.monotonic()
    for _ in range(5):
        try:
            dist.all_reduce(x, op=dist.ReduceOp.AVG)
        except Exception as e:  # noqa: BLE001 - the test reports what was raised
            return {"elapsed": time.monotonic() - t0, "type": type(e).__name__, "message": str(e)}
    return {"elapsed": time.monotonic() - t0, "type": "none", "message": ""}


def test_killed_rank_makes_the_others_raise_within_the_timeout() -> None:
    world, victim, timeout_s = 4, 3, 6.0
    results = run_ranks(_killed, world, victim, timeout_s, allow_missing={victim}, timeout=90)
    for rank in st.topology.ring(world).neighbors(victim):
        r = results[rank]
        assert r["type"] == "PeerError" and "neighbour 3" in r["message"], r
        assert r["elapsed"] < timeout_s + 3.0, r
    assert all(r["type"] != "none" for r in results.values()), results


def _ddp_compressed(rank: int, world: int) -> dict:
    st.configure(topology="ring", gossip_sum=True, compression="int8", gamma=0.5)
    dist.init_process_group("saddle", timeout=timedelta(seconds=60))
    model = _model().float()
    losses = ddp_losses(nn.parallel.DistributedDataParallel(model), rank)
    stats = st.backend.gossip_stats()
    dist.destroy_process_group()
    numel = sum(p.numel() for p in model.parameters())
    return {"start": sum(losses[:5]) / 5, "end": sum(losses[-5:]) / 5, "stats": stats, "numel": numel}


def test_ddp_on_the_saddle_backend_with_int8_compression() -> None:
    for rank, r in run_ranks(_ddp_compressed, 4).items():
        assert r["end"] < 0.5 * r["start"], (rank, r)
        rounds = r["stats"]["rounds"]
        assert rounds > 0
        # One int8 message per neighbour per round: well under the fp32 bytes of the same rounds.
        assert r["stats"]["bytes_sent"] < 0.5 * rounds * 2 * 4 * r["numel"], r
