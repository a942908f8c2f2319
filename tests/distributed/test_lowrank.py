"""Low-rank gossip (PowerGossip) over real ranks, against the per-edge power iteration written plainly here.

The reference keeps, for every edge {lo, hi} of a round's (symmetrised) graph and every matrix, the
factors P and Q both ends share, and runs the half steps of ALGORITHMS.md ("Low-rank gossip") on the
four ranks' tensors at once. The factors start from a seed of the pair, as documented in
``saddle_torch/gossip/lowrank.py``: ``torch.randn(rows, r)`` (float64) from a generator seeded with
``crc32(f"{name_hash}:{lo}:{hi}")``, one matrix after the other.
"""

from __future__ import annotations

import zlib
from datetime import timedelta

import pytest
import torch
from harness import resume_train, run_ranks

import saddle_torch as st
from saddle_torch import _ops

SHAPES = [torch.Size([6, 5]), torch.Size([5]), torch.Size([4, 3]), torch.Size([2, 2])]  # [2,2]: exact
WORLD = 4


def _x(rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(sum(s.numel() for s in SHAPES), generator=g, dtype=torch.float64)


def _gossip(rank: int, world: int, topology: str, comp: str, rounds: int) -> list[torch.Tensor]:
    st.init(topology=topology, timeout=timedelta(seconds=60))
    x = _x(rank)
    out = []
    for _ in range(rounds):
        st.neighbor_average(x, name="x", inplace=True, compression=comp, shapes=SHAPES)
        out.append(x.clone())
    return out


def _orth(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm() if v.shape[1] == 1 else torch.linalg.qr(v, mode="reduced").Q


def _reference(topology: str, rank: int, iterations: int, rounds: int) -> list[list[torch.Tensor]]:
    """Every rank's tensor after each round, computed plainly for all four ranks at once."""
    topo = st.topology.resolve(topology, WORLD)
    xs = [_x(r) for r in range(WORLD)]
    offsets, o = [], 0
    for s in SHAPES:
        offsets.append(o)
        o += s.numel()
    matrices = [
        (offsets[k], s[0], s.numel() // s[0])
        for k, s in enumerate(SHAPES)
        if len(s) >= 2 and rank * (s[0] + s.numel() // s[0]) < s.numel()
    ]
    covered = {i for off, r_, c in matrices for i in range(off, off + r_ * c)}
    exact = [i for i in range(o) if i not in covered]
    seed = _ops.name_hash("x")
    factors: dict[tuple[int, int], dict] = {}
    history: list[list[torch.Tensor]] = []
    for step in range(rounds):
        w = topo.mixing_matrix(step).to(torch.float64)
        sym = (w + w.t()) / 2
        pairs = [(i, j) for i in range(WORLD) for j in range(i + 1, WORLD) if sym[i, j] > 0]
        for _ in range(iterations):
            new = [x.clone() for x in xs]
            for lo, hi in pairs:
                f = factors.get((lo, hi))
                if f is None:
                    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{lo}:{hi}".encode()))
                    f = factors[(lo, hi)] = {
                        "p": [
                            torch.randn(r_, rank, generator=g, dtype=torch.float64) for _, r_, _ in matrices
                        ],
                        "q": [torch.zeros(c, rank, dtype=torch.float64) for _, _, c in matrices],
                        "n": 0,
                    }
                c = float(sym[lo, hi])
                for m, (off, rows, cols) in enumerate(matrices):
                    diff = (xs[hi] - xs[lo])[off : off + rows * cols].view(rows, cols)
                    if f["n"] % 2 == 0:
                        p = _orth(f["p"][m])
                        f["p"][m], f["q"][m] = p, diff.t() @ p
                        d = p @ f["q"][m].t()
                    else:
                        q = _orth(f["q"][m])
                        f["q"][m], f["p"][m] = q, diff @ q
                        d = f["p"][m] @ q.t()
                    new[lo][off : off + rows * cols] += c * d.reshape(-1)
                    new[hi][off : off + rows * cols] -= c * d.reshape(-1)
                for i in exact:
                    new[lo][i] += c * (xs[hi][i] - xs[lo][i])
                    new[hi][i] += c * (xs[lo][i] - xs[hi][i])
                f["n"] += 1
            xs = new
        history.append([x.clone() for x in xs])
    return history


@pytest.mark.parametrize(
    ("topology", "comp"),
    [("ring", "lowrank:1"), ("one_peer_exponential", "lowrank:1"), ("ring", "lowrank:2:2")],
)
def test_low_rank_gossip_equals_the_per_edge_power_iteration(topology: str, comp: str) -> None:
    rounds = 6
    rank, iterations = (int(v) for v in (comp.split(":") + ["1"])[1:3])
    got = run_ranks(_gossip, WORLD, topology, comp, rounds)
    want = _reference(topology, rank, iterations, rounds)
    mean0 = torch.stack([_x(r) for r in range(WORLD)]).mean(0)
    for step in range(rounds):
        for r in range(WORLD):
            torch.testing.assert_close(got[r][step], want[step][r], rtol=0, atol=1e-6)
        mean = torch.stack([got[r][step] for r in range(WORLD)]).mean(0)
        torch.testing.assert_close(mean, mean0, rtol=0, atol=1e-9)  # antisymmetric: the average stays
    spread0 = sum(float((_x(r) - mean0).norm()) for r in range(WORLD))
    spread = sum(float((got[r][-1] - mean0).norm()) for r in range(WORLD))
    assert spread < 0.8 * spread0  # and the ranks come together


def _lowrank_phase(rank: int, world: int, path: str, start: int, stop: int, mode: str) -> list | None:
    st.init(topology="one_peer_exponential", timeout=timedelta(seconds=60))
    torch.manual_seed(rank)  # different models: the factors and the models' differences matter
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = st.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, algorithm="q-saddle", compression="lowrank:1"
    )
    resume_train(model, opt, path=path, rank=rank, start=start, stop=stop, mode=mode)
    ctx = st.gossip.current()
    (state,) = ctx.lowrank.values()
    factors = [t for _, f in sorted(state.edges.items()) for t in f.p + f.q]
    return [p.detach().clone() for p in model.parameters()] + factors


def test_low_rank_factors_survive_checkpoint_kill_resume_bit_for_bit(tmp_path) -> None:
    world, path = 4, str(tmp_path / "ckpt-{rank}.pt")
    straight = run_ranks(_lowrank_phase, world, path, 0, 6, "run")
    run_ranks(
        _lowrank_phase, world, path, 0, 3, "save-and-die", allow_missing=set(range(world)), wait_for_exit=True
    )
    resumed = run_ranks(_lowrank_phase, world, path, 3, 6, "run")
    for rank in range(world):
        assert len(straight[rank]) == len(resumed[rank]) > 4  # parameters and every edge's factors
        for a, b in zip(straight[rank], resumed[rank], strict=True):
            assert torch.equal(a, b), rank


def _hook_lowrank(rank: int, world: int) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's weights ...
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(rank + 7)))  # ... then differ
    start = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    ddp.register_comm_hook(
        st.hooks.GossipHookState(mix="params", compression="lowrank:1"), st.hooks.gossip_hook
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no local step: the parameters move by gossip alone
    for step in range(5):
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        ddp(x).sum().backward()
        opt.step()
    end = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    return {
        "start": start,
        "end": end,
        "exact": st.neighbor_average(start.clone(), name="exact", compression="none"),
    }


def test_the_ddp_hook_gossips_parameters_in_low_rank() -> None:
    res = run_ranks(_hook_lowrank, WORLD)
    start = torch.stack([res[r]["start"] for r in range(WORLD)])
    end = torch.stack([res[r]["end"] for r in range(WORLD)])
    torch.testing.assert_close(end.mean(0), start.mean(0), rtol=0, atol=1e-5)  # the average stays
    spread = lambda t: float((t - t.mean(0)).norm())  # noqa: E731
    assert spread(end) < 0.9 * spread(start)  # the ranks come together ...
    one_exact = torch.stack([res[r]["exact"] for r in range(WORLD)])
    assert not torch.allclose(end, one_exact, atol=1e-3)  # ... through projections, not exact averages
