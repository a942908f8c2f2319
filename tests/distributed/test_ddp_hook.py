"""The DDP gossip hook between real processes: gradients become neighbour averages; training works."""

from __future__ import annotations

import pickle
from datetime import timedelta

import torch
import torch.distributed as dist
from harness import run_ranks
from test_training import _data, _model, ddp_losses
from torch import nn

import saddle_torch as st


def _local_grads(model: nn.Module, x, y) -> torch.Tensor:
    m = _model()
    m.load_state_dict(model.state_dict())
    loss = nn.functional.cross_entropy(m(x), y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(m.parameters()))])


def _hook_equals_wg(rank: int, world: int) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    ddp = nn.parallel.DistributedDataParallel(_model())
    state = st.hooks.GossipHookState(warmup_steps=1)
    ddp.register_comm_hook(state, st.hooks.gossip_hook)
    out = {}
    for step in range(3):
        x, y = _data(rank, 16, step)
        g_local = _local_grads(ddp.module, x, y)
        every = [torch.empty_like(g_local) for _ in range(world)]
        dist.all_gather(every, g_local)
        ddp.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        got = torch.cat([p.grad.reshape(-1) for p in ddp.module.parameters()])
        if step == 0:  # warm-up: exact average
            ref = torch.stack(every).mean(0)
        else:
            w = st.topology.ring(world).weights(rank)
            ref = sum(w[j] * every[j] for j in w)
        out[step] = float((got - ref).norm() / ref.norm())
        with torch.no_grad():
            for p in ddp.module.parameters():
                p -= 0.1 * p.grad
    out["pickled"] = pickle.loads(pickle.dumps(state)).iteration
    return out


def test_gossip_hook_gradients_are_neighbour_averages() -> None:
    for rank, r in run_ranks(_hook_equals_wg, 4).items():
        for step in range(3):
            assert r[step] < 1e-10, (rank, step, r)
        assert r["pickled"] == 3


def _train(rank: int, world: int, compression: str) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    model = _model().float()
    ddp = nn.parallel.DistributedDataParallel(model)
    ddp.register_comm_hook(
        st.hooks.GossipHookState(warmup_steps=2, compression=compression), st.hooks.gossip_hook
    )
    losses = ddp_losses(ddp, rank)
    return {"start": sum(losses[:5]) / 5, "end": sum(losses[-5:]) / 5, "stats": st.stats()}


def test_unmodified_ddp_loop_trains_with_the_gossip_hook() -> None:
    for compression in ("none", "int8"):
        for rank, r in run_ranks(_train, 4, compression).items():
            assert r["end"] < 0.5 * r["start"], (compression, rank, r)
            assert r["stats"]["rounds"] > 0, r
