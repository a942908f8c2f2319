"""The torch.distributed backend "saddle" with real processes over Gloo.

Every collective is exact (AVG included, for floats and integers: what metric and logging code
sends); DDP models on a saddle group gossip through the hook the backend registers, and train like
plain DDP.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from harness import run_ranks
from test_training import _model, ddp_losses
from torch import nn

import saddle_torch as st


def _x(rank: int) -> torch.Tensor:
    return torch.randn(1001, generator=torch.Generator().manual_seed(rank), dtype=torch.float64)


def _collectives(rank: int, world: int) -> dict:
    st.configure(topology="ring")
    dist.init_process_group("saddle", timeout=timedelta(seconds=60))
    out = {"backend": dist.get_backend()}
    x = _x(rank)
    dist.all_reduce(x, op=dist.ReduceOp.AVG)
    ref = torch.stack([_x(r) for r in range(world)]).mean(0)
    out["avg_error"] = float((x - ref).abs().max())
    metric = torch.tensor(float(rank) + 0.5)  # a 0-d float metric, as Lightning's sync_dist sends
    dist.all_reduce(metric, op=dist.ReduceOp.AVG)
    out["metric"] = float(metric)
    batch = torch.tensor(32 + rank, dtype=torch.int64)  # an int64 batch size, averaged
    dist.all_reduce(batch, op=dist.ReduceOp.AVG)
    out["int_avg"] = (int(batch), batch.dtype)
    s = torch.full((5,), float(rank))
    dist.all_reduce(s)  # float SUM: exact
    out["float_sum"] = s.tolist()
    n = torch.tensor([rank + 1])
    dist.all_reduce(n)
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
    out["future"] = float(h.get_future().wait()[0][0])
    try:
        st.configure(topology="torus")
        out["reconfigure"] = "accepted"
    except RuntimeError as e:
        out["reconfigure"] = str(e)
    dist.destroy_process_group()
    return out


def test_every_collective_is_exact_including_avg() -> None:
    world = 4
    for r in run_ranks(_collectives, world).values():
        assert r["backend"] == "saddle"
        assert r["avg_error"] < 1e-15, r
        assert r["metric"] == pytest.approx(sum(q + 0.5 for q in range(world)) / world)
        assert r["int_avg"] == ((32 * world + sum(range(world))) // world, torch.int64)
        assert r["float_sum"] == [float(sum(range(world)))] * 5
        assert r["int_sum"] == sum(range(1, world + 1))
        assert r["max"] == [world - 1.0] * 3
        assert r["broadcast"] == [2.0] * 4
        assert r["allgather"] == [[float(q)] * 2 for q in range(world)]
        assert r["future"] == pytest.approx(float(torch.stack([_x(q) for q in range(world)]).mean(0)[0]))
        assert "before init_process_group('saddle')" in r["reconfigure"], r


def _ddp(rank: int, world: int, hook: bool) -> dict:
    st.configure(topology="ring", ddp_hook=hook)
    dist.init_process_group("saddle", timeout=timedelta(seconds=60))
    ddp = nn.parallel.DistributedDataParallel(_model().float())
    losses = ddp_losses(ddp, rank)
    params = torch.cat([p.detach().reshape(-1) for p in ddp.parameters()])
    every = [torch.empty_like(params) for _ in range(world)]
    dist.all_gather(every, params)
    spread = max(float((e - every[0]).abs().max()) for e in every)
    out = {"start": sum(losses[:5]) / 5, "end": sum(losses[-5:]) / 5, "spread": spread}
    try:
        out["rounds"] = st.backend.gossip_stats()["rounds"]
    except ValueError:
        out["rounds"] = 0
    if hook:  # the DDP hook's rounds time out with the group's own timeout
        out["timeout"] = st.backend._registry.context(ddp.process_group).timeout.total_seconds()
    dist.destroy_process_group()
    return out


@pytest.mark.parametrize("hook", [True, False])
def test_unmodified_ddp_loop_gossips_on_the_saddle_backend(hook: bool) -> None:
    for rank, r in run_ranks(_ddp, 4, hook).items():
        assert r["end"] < 0.5 * r["start"], (rank, r)
        if hook:  # decentralized: neighbours average, the models differ a little
            assert r["rounds"] > 0 and 0 < r["spread"] < 0.05, r
            assert r["timeout"] == 60.0, r
        else:  # configure(ddp_hook=False): plain DDP, identical models
            assert r["rounds"] == 0 and r["spread"] == 0.0, r


def _killed(rank: int, world: int, victim: int, timeout_s: float) -> dict:
    st.configure(topology="ring")
    dist.init_process_group("saddle", timeout=timedelta(seconds=timeout_s))
    torch.manual_seed(0)
    ddp = nn.parallel.DistributedDataParallel(nn.Linear(100, 10))
    x = torch.ones(4, 100)
    for _ in range(2):  # DDP rebuilds its buckets (a collective of its own) after the first iteration
        ddp(x).sum().backward()
    if rank == victim:
        os._exit(3)
    t0 = time.monotonic()
    for _ in range(5):
        try:
            ddp(x).sum().backward()
        except Exception as e:  # noqa: BLE001 - the test reports what was raised
            return {"elapsed": time.monotonic() - t0, "type": type(e).__name__, "message": str(e)}
    return {"elapsed": time.monotonic() - t0, "type": "none", "message": ""}


def test_killed_rank_makes_its_neighbours_raise_peer_error_within_the_timeout() -> None:
    world, victim, timeout_s = 4, 3, 6.0
    results = run_ranks(_killed, world, victim, timeout_s, allow_missing={victim}, timeout=90)
    for rank in st.topology.ring(world).neighbors(victim):
        r = results[rank]
        assert "PeerError" in r["type"] + r["message"] and "neighbour 3" in r["message"], r
        assert r["elapsed"] < timeout_s + 3.0, r


def _ddp_compressed(rank: int, world: int) -> dict:
    st.configure(topology="ring", compression="int8")
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


def test_removed_option_and_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="gossip_sum.*was removed"):
        st.configure(gossip_sum=True)
    with pytest.raises(ValueError, match="mix must be one of"):
        st.configure(mix="everything")
    st.configure()  # back to the defaults for the tests that follow in this process
