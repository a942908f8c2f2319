"""DistributedOptimizer across real ranks over Gloo: training, cross-gradients, DDP parity, resume."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from harness import run_ranks
from torch import nn

import saddle_torch as st
from saddle_torch.optim.ngm import CrossGradients

CLASSES, DIM = 4, 8


def _data(rank: int, n: int = 64, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-IID: rank r only sees classes r and r+1 (mod 4); class c is a Gaussian blob."""
    g = torch.Generator().manual_seed(10_000 * rank + step)
    y = torch.tensor([(rank + i % 2) % CLASSES for i in range(n)])
    centres = torch.eye(CLASSES, DIM, dtype=torch.float64) * 2.5
    x = centres[y] + torch.randn(n, DIM, generator=g, dtype=torch.float64)
    return x, y


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, CLASSES)).double()


def _closure(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def _averaged_model_loss(model: nn.Module, world: int) -> float:
    """Loss of the average of all ranks' models on the union of all ranks' data (in the model's dtype)."""
    dtype = next(model.parameters()).dtype
    avg = _model().to(dtype)
    with torch.no_grad():
        for p_avg, p in zip(avg.parameters(), model.parameters(), strict=True):
            t = p.detach().clone()
            dist.all_reduce(t)
            p_avg.copy_(t / world)
        x, y = _data(dist.get_rank())
        loss = torch.tensor([float(nn.functional.cross_entropy(avg(x.to(dtype)), y))])
    dist.all_reduce(loss)
    return float(loss) / world


def ddp_losses(ddp: nn.Module, rank: int, steps: int = 60) -> list[float]:
    """Train a DDP-wrapped model (float32) with SGD on this rank's non-IID batches; the losses."""
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(steps):
        x, y = _data(rank, 32, step + 1)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x.float()), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


# --- every algorithm trains ------------------------------------------------------------------------
ALGOS = ["dsgd", "qgm", "sam-dsgd", "q-saddle", "ngm", "n-saddle", "allreduce", "n-saddle@int8"]


def _train_all(rank: int, world: int, steps: int) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    results = {}
    for config in ALGOS:
        algo, _, comp = config.partition("@")
        dtype = torch.float32 if comp else torch.float64  # compressed gossip is float32
        for order in ("awc", "atc") if algo in ("q-saddle", "n-saddle") else ("awc",):
            model = _model().to(dtype)
            momentum = 0.0 if "q" in algo.split("-")[0] else 0.9
            inner = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
            opt = st.DistributedOptimizer(inner, model, algorithm=algo, order=order, compression=comp or None)
            start = _averaged_model_loss(model, world)
            for step in range(steps):
                x, y = _data(rank, 32, step + 1)
                opt.step(_closure(model, opt, x.to(dtype), y))
            results[f"{config}/{order}"] = {
                "start": start,
                "end": _averaged_model_loss(model, world),
                "consensus": st.consensus_distance(model),
                "norm": float(sum((p.detach() ** 2).sum() for p in model.parameters())),
            }
    return results


def test_every_algorithm_trains_on_non_iid_data() -> None:
    results = run_ranks(_train_all, 4, 60, timeout=600)[0]
    for name, r in results.items():
        assert r["end"] < 0.4 * r["start"], (name, r)
        assert r["consensus"] < 1e-2 * r["norm"], (name, r)


# --- N-SADDLe cross-gradients ----------------------------------------------------------------------
def _grad_on(model: nn.Module, x, y, rho: float | None) -> torch.Tensor:
    """∇F(model; x, y) — with SAM when rho is given — computed plainly on a copy."""
    m = _model()
    m.load_state_dict(model.state_dict())
    loss = nn.functional.cross_entropy(m(x), y)
    g = torch.autograd.grad(loss, list(m.parameters()))
    if rho is not None:
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        with torch.no_grad():
            for p, gi in zip(m.parameters(), g, strict=True):
                p.add_(rho * gi / (norm + 1e-12))
        g = torch.autograd.grad(nn.functional.cross_entropy(m(x), y), list(m.parameters()))
    return torch.cat([gi.reshape(-1) for gi in g])


def _cross(rank: int, world: int, cross_sam: bool) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    model = _model(seed=rank)  # different models, so every cross-gradient is distinct
    opt = st.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), model, algorithm="n-saddle", cross_sam=cross_sam
    )
    errors = {}
    for step in range(2):
        before = _model()
        before.load_state_dict(model.state_dict())
        x, y = _data(rank, 16, step)
        opt.step(_closure(model, opt, x, y))
        for j, grads in opt.saddle.phase(CrossGradients).received.items():
            (got,) = grads.values()
            xj, yj = _data(j, 16, step)  # j's batch of this step
            expected = _grad_on(before, xj, yj, 0.05 if cross_sam else None)
            errors[(step, j)] = float((got - expected).norm() / expected.norm())
    return errors


@pytest.mark.parametrize("cross_sam", [False, True])
def test_n_saddle_cross_gradient_is_my_model_on_the_neighbours_batch(cross_sam: bool) -> None:
    for rank, errs in run_ranks(_cross, 4, cross_sam).items():
        assert len(errs) == 4, errs  # two neighbours, two steps
        for key, err in errs.items():
            assert err < 1e-10, (rank, key, err)


# --- allreduce equals DDP --------------------------------------------------------------------------
def _ddp_parity(rank: int, world: int) -> float:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    a, b = _model(), _model()
    opt_a = st.DistributedOptimizer(
        torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), a, algorithm="allreduce"
    )
    ddp = nn.parallel.DistributedDataParallel(b)
    opt_b = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    for step in range(5):
        x, y = _data(rank, 16, step)
        opt_a.step(_closure(a, opt_a, x, y))
        opt_b.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt_b.step()
    diff = max(float((p - q).abs().max() / q.abs().max()) for p, q in zip(a.parameters(), b.parameters()))
    same = torch.tensor([diff])
    dist.all_reduce(same, op=dist.ReduceOp.MAX)
    return float(same)


def test_allreduce_gives_ddp_parameters() -> None:
    for rank, diff in run_ranks(_ddp_parity, 4).items():
        assert diff < 1e-10, (rank, diff)


# --- checkpoint, kill, resume ----------------------------------------------------------------------
def _train_phase(
    rank: int, world: int, path: str, start: int, stop: int, mode: str, alg: str, comp: str
) -> list | None:
    st.init(topology="one_peer_exponential", timeout=timedelta(seconds=60))
    dtype = torch.float64 if comp == "none" else torch.float32  # compressed gossip is float32
    model = _model().to(dtype)
    opt = st.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), model, algorithm=alg, compression=comp
    )
    if start > 0:
        st.load_checkpoint(path, model, opt)
    for step in range(start, stop):
        x, y = _data(rank, 16, step)
        x = (x + 0.01 * torch.randn_like(x)).to(dtype)  # consumes the RNG: resume must restore it too
        opt.step(_closure(model, opt, x, y))
    if mode == "save-and-die":
        st.save_checkpoint(path, model, opt)
        dist.barrier()
        os._exit(0)  # killed: no clean shutdown
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    ("alg", "comp"),
    [
        ("q-saddle", "none"),
        ("n-saddle", "int8"),  # per-neighbour CHOCO copies per phase, per-link cross-gradient errors
    ],
)
def test_checkpoint_kill_resume_is_bit_for_bit(tmp_path, alg: str, comp: str) -> None:
    world, path = 4, str(tmp_path / "ckpt-{rank}.pt")
    straight = run_ranks(_train_phase, world, path, 0, 6, "run", alg, comp)
    run_ranks(
        _train_phase,
        world,
        path,
        0,
        3,
        "save-and-die",
        alg,
        comp,
        allow_missing=set(range(world)),
        wait_for_exit=True,
    )
    assert all(os.path.exists(path.format(rank=r)) for r in range(world))
    resumed = run_ranks(_train_phase, world, path, 3, 6, "run", alg, comp)
    for rank in range(world):
        for a, b in zip(straight[rank], resumed[rank], strict=True):
            assert torch.equal(a, b), rank
