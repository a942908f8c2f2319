"""Asynchronous push-sum against the dense average, with the events of a slow rank simulated in order.

Four ranks on a ring; rank 3 steps once for every four steps of the others and its links take
6 ticks to deliver a message (the others' 1); a rank sends only on links that are free. The
simulated mailbox delivers messages in order per link, at their arrival tick;
:class:`~saddle_torch.gossip.pushsum.PushSum` (the code the optimizer runs) never waits. In the
first half every step also moves the rank's model by a local update (random, per rank and step),
as an optimizer would; the second half is pure gossip. The mass in the models and on the wire is
at every tick the starts' sum plus the sum of every local update so far (each counted once, whatever
the rank's weight), and after draining every model is that dense average.
"""

from __future__ import annotations

import pytest
import torch

from saddle_torch.gossip.pushsum import PushSum

N, DIM = 4, 6
SLOW = 3


class Net:
    def __init__(self) -> None:
        self.now = 0
        self.wire: dict[tuple[int, int], list[tuple[float, torch.Tensor]]] = {}

    def latency(self, src: int, dst: int) -> int:
        return 6 if SLOW in (src, dst) else 1


class Mailbox:
    """The mailbox's contract, simulated: one message in flight per link, delivered at its arrival tick."""

    def __init__(self, net: Net, me: int) -> None:
        self.net, self.me = net, me
        self.busy_until: dict[int, float] = {}
        self.posted: dict[int, list] = {}  # peer -> [buffer, filled]

    def send(self, peer: int, t: torch.Tensor) -> None:
        assert self.sent(peer), "a second message while one is in flight"
        arrival = self.net.now + self.net.latency(self.me, peer)
        self.net.wire.setdefault((self.me, peer), []).append((arrival, t.clone()))
        self.busy_until[peer] = arrival

    def sent(self, peer: int) -> bool:
        return self.busy_until.get(peer, -1) <= self.net.now

    def recv(self, peer: int, t: torch.Tensor) -> None:
        self.posted[peer] = [t, False]

    def received(self, peer: int) -> bool:
        slot = self.posted[peer]
        queue = self.net.wire.get((peer, self.me), [])
        if not slot[1] and queue and queue[0][0] <= self.net.now:
            slot[0].copy_(queue.pop(0)[1])
            slot[1] = True
        return slot[1]

    def wait_received(self, peer: int) -> None:
        assert self.received(peer), "nothing left to wait for"


def _mass(ranks: list[PushSum], zs: list[torch.Tensor], net: Net) -> tuple[torch.Tensor, float]:
    x = sum(ps.w * z for ps, z in zip(ranks, zs, strict=True))
    w = sum(ps.w for ps in ranks)
    for queue in net.wire.values():
        for _, msg in queue:
            x, w = x + msg[:DIM], w + float(msg[DIM])
    for ps in ranks:  # delivered into a posted buffer, not yet added
        for buf, filled in ps.transport.posted.values():
            if filled:
                x, w = x + buf[:DIM], w + float(buf[DIM])
    return x, w


@pytest.mark.parametrize("ticks", [400])
def test_push_sum_with_a_slow_rank_keeps_the_mass_and_reaches_the_dense_average(ticks: int) -> None:
    net = Net()
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(DIM, generator=g, dtype=torch.float64) for _ in range(N)]
    dense = torch.stack(zs).mean(0)
    boxes = [Mailbox(net, i) for i in range(N)]
    ring = [[(i - 1) % N, (i + 1) % N] for i in range(N)]
    ranks = [PushSum(boxes[i], ring[i], ring[i], DIM, torch.float64) for i in range(N)]
    steps = [0] * N
    updates = torch.zeros(DIM, dtype=torch.float64)  # the sum of every local update
    weights = set()
    for tick in range(ticks):
        net.now = tick
        for i in range(N):
            if i == SLOW and tick % 4:
                continue  # the straggler steps four times slower
            if tick < ticks // 2:  # the local update, before mixing (the optimizer's step)
                delta = 0.1 * torch.randn(DIM, generator=g, dtype=torch.float64)
                zs[i] += delta
                updates += delta
            ranks[i].mix(zs[i], [(i - 1) % N, (i + 1) % N])
            weights.add(round(ranks[i].w, 6))
            steps[i] += 1
        x, w = _mass(ranks, zs, net)
        torch.testing.assert_close(x, dense * N + updates, rtol=0, atol=1e-10)  # nothing created or lost
        assert abs(w - N) < 1e-12
    dense = dense + updates / N
    assert len(weights) > 10  # the weights really moved away from 1: a plain average would be wrong
    assert steps[0] == ticks and steps[SLOW] == ticks // 4  # the others never waited for it
    spread_live = max(float((z - dense).abs().max()) for z in zs)
    net.now = float("inf")  # draining: everything on the wire arrives; the ranks poll in turns here
    for ps in ranks:
        ps.start_drain()
    for _ in range(20):
        if all([ps.drain_step() for ps in ranks]):
            break
    else:
        raise AssertionError("draining did not end")
    for ps, z in zip(ranks, zs, strict=True):
        ps.model(z)
    weighted = sum(ps.w * z for ps, z in zip(ranks, zs, strict=True)) / sum(ps.w for ps in ranks)
    torch.testing.assert_close(weighted, dense, rtol=0, atol=1e-12)  # the average did not drift
    assert spread_live < 1e-3 and max(float((z - dense).abs().max()) for z in zs) < 1e-3  # consensus
    assert all(not queue for queue in net.wire.values())


def test_asynchronous_gossip_refuses_what_needs_synchronous_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    import saddle_torch as st

    ctx = st.init()
    model = torch.nn.Linear(4, 2)

    def wrap(**options):
        return st.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, **options)

    with pytest.raises(ValueError, match="needs synchronous rounds"):
        wrap(algorithm="dsgd", max_staleness=4, compression="int8")
    with pytest.raises(ValueError, match="in step with its neighbours"):
        wrap(algorithm="n-saddle", max_staleness=4)
    with pytest.raises(ValueError, match="max_staleness must be None or ≥ 0"):
        wrap(algorithm="dsgd", max_staleness=-1)
    # an elastic job lines its survivors up at one step after a membership change (its runtime is
    # only read for being there before anything is built)
    monkeypatch.setattr(ctx, "elastic", object())
    with pytest.raises(ValueError, match=r"not supported under init\(elastic=True\)"):
        wrap(algorithm="dsgd", max_staleness=float("inf"))
