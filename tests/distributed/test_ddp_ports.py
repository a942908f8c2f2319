"""DDP scripts ported the documented ways train like plain DDP at the defaults (real ranks over Gloo).

Two scripts: a digits MLP (scikit-learn's 8×8 digits, 4 ranks on a ring, SGD + momentum, 165 steps)
on IID and on non-IID shards, and a script shaped like pytorch/examples'
``distributed/ddp-tutorial-series/multigpu_torchrun.py`` (a linear model on random regression data,
``DistributedSampler``, plain SGD lr 1e-3). Each runs as plain DDP and as its ports: the hook
(``register_comm_hook``), the backend (``init_process_group("saddle")``) and, for the tutorial,
``DistributedOptimizer`` without DDP. Before the hook mixed parameters, gradient gossip at its
defaults ended at 35-68% per rank on IID digits where DDP reached 95%.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from harness import run_ranks
from torch import nn

import saddle_torch as st

pytest.importorskip("sklearn")
WORLD, STEPS = 4, 165


def _digits(rank: int, iid: bool) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = perm[:297], perm[297:]
    if iid:
        mine = train[rank::WORLD]
    else:  # sorted by class: 2-3 classes per rank
        mine = train[torch.argsort(y[train], stable=True)].chunk(WORLD)[rank]
    return x[mine], y[mine], x[test], y[test]


def _setup(port: str) -> None:
    if port == "backend":
        st.configure(topology="ring")
        dist.init_process_group("saddle", timeout=timedelta(seconds=60))
    else:
        st.init(topology="ring", timeout=timedelta(seconds=60))


def _wrap(model: nn.Module, port: str) -> nn.Module:
    if port == "local":
        return model
    ddp = nn.parallel.DistributedDataParallel(model)
    if port == "hook":
        ddp.register_comm_hook(st.hooks.GossipHookState(), st.hooks.gossip_hook)  # the port's line
    return ddp


def _digits_run(rank: int, world: int, port: str, iid: bool) -> dict:
    _setup(port)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    net = _wrap(model, port)
    xtr, ytr, xte, yte = _digits(rank, iid)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    for _ in range(STEPS):
        idx = torch.randint(0, len(ytr), (32,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
        opt.step()
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
        for p in model.parameters():  # the averaged model
            dist.all_reduce(p)
            p.div_(world)
        acc_avg = float((model(xte).argmax(1) == yte).float().mean())
    dist.destroy_process_group()
    return {"acc": acc, "acc_avg": acc_avg}


@pytest.fixture(scope="module")
def digits() -> dict:
    return {
        (port, iid): run_ranks(_digits_run, WORLD, port, iid, timeout=300)
        for port in ("ddp", "hook", "backend", "local")
        for iid in (True, False)
    }


@pytest.mark.parametrize("port", ["hook", "backend"])
def test_digits_ports_reach_ddp_accuracy(digits: dict, port: str) -> None:
    for iid in (True, False):
        ddp = digits[("ddp", iid)][0]["acc"]
        ranks = digits[(port, iid)]
        mean = sum(r["acc"] for r in ranks.values()) / WORLD
        local = sum(r["acc"] for r in digits[("local", iid)].values()) / WORLD
        assert ranks[0]["acc_avg"] >= ddp - 0.01, (port, iid, ddp, ranks)  # the averaged model
        if iid:  # every rank's own model, too
            assert mean >= ddp - 0.01, (port, ddp, ranks)
        else:  # non-IID: each rank's model is far better than training alone (measured 92.4% vs 31%)
            assert mean >= ddp - 0.03 and mean > local + 0.4, (port, ddp, local, ranks)


# --- a script shaped like pytorch/examples' DDP tutorial --------------------------------------------
class _Pairs(torch.utils.data.Dataset):
    """Random (20 features → 1 target) pairs, as the tutorial's toy data set."""

    def __init__(self, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.rand(size, 20, generator=g), torch.rand(size, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _tutorial_run(rank: int, world: int, port: str, epochs: int = 10) -> float:
    _setup(port)
    torch.manual_seed(0)
    model = nn.Linear(20, 1)
    data = _Pairs(2048)
    sampler = torch.utils.data.distributed.DistributedSampler(data)
    loader = torch.utils.data.DataLoader(data, batch_size=32, sampler=sampler)
    if port == "optimizer":  # no DDP: same start, then gossip the parameters
        st.broadcast_parameters(model.state_dict(), root_rank=0)
        opt = st.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3), model)
        net = model
    else:
        net = _wrap(model, port)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        total = torch.zeros(2)
        for x, y in loader:

            def closure(x=x, y=y) -> torch.Tensor:
                opt.zero_grad()
                loss = nn.functional.mse_loss(net(x), y)
                loss.backward()
                return loss

            if port == "optimizer":
                loss = opt.step(closure)
            else:
                loss = closure()
                opt.step()
            total += torch.tensor([float(loss.detach()) * len(x), len(x)])
    dist.all_reduce(total)
    dist.destroy_process_group()
    return float(total[0] / total[1])  # the last epoch's mean loss over every rank's batches


def test_tutorial_script_ports_reach_ddp_loss() -> None:
    """Measured: DDP 0.1184; hook and backend equal to 1e-3; DistributedOptimizer (q-saddle: its
    quasi-global momentum is a momentum the tutorial's plain SGD lacks) 0.0982, lower."""
    ddp = run_ranks(_tutorial_run, WORLD, "ddp", timeout=300)[0]
    for port in ("hook", "backend", "optimizer"):
        loss = run_ranks(_tutorial_run, WORLD, port, timeout=300)[0]
        assert loss <= 1.01 * ddp, (port, loss, ddp)
        if port != "optimizer":
            assert abs(loss - ddp) <= 0.01 * ddp, (port, loss, ddp)
