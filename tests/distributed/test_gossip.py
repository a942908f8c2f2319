"""Gossip rounds between real processes over Gloo on 127.0.0.1."""

from __future__ import annotations

import math
import os
import signal
import time
from datetime import timedelta

import pytest
import torch
from harness import run_ranks

import saddle_torch as st


def _x(rank: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + rank)
    return torch.randn(d, generator=g, dtype=torch.float64).to(dtype)


# --- one round equals W·X --------------------------------------------------------------------------
def _one_round(rank: int, world: int, topo_name: str) -> dict:
    st.init(topology=topo_name, timeout=timedelta(seconds=60))
    out = {}
    for dtype in (torch.float32, torch.float64):
        for gamma in (1.0, 0.5):
            x = _x(rank, 3001, dtype)
            y = st.neighbor_average(x, gamma=gamma)
            X = torch.stack([_x(r, 3001, torch.float64) for r in range(world)])
            W = st.topology.resolve(topo_name, world).mixing_matrix()
            ref = (torch.eye(world, dtype=torch.float64) * (1 - gamma) + gamma * W) @ X
            err = float((y.double() - ref[rank]).norm() / ref[rank].norm())
            out[(str(dtype), gamma)] = err
            assert torch.equal(x, _x(rank, 3001, dtype)), "neighbor_average must not modify its input"
    return out


@pytest.mark.parametrize("world,topo", [(4, "ring"), (8, "ring"), (8, "exponential"), (4, "star")])
def test_one_round_equals_dense_WX(world: int, topo: str) -> None:
    results = run_ranks(_one_round, world, topo)
    for rank, errs in results.items():
        for key, err in errs.items():
            assert err < 1e-6, (rank, key, err)


# --- consensus rate and exact averaging -----------------------------------------------------------
def _consensus(rank: int, world: int, rounds: int) -> list[float]:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    x = _x(rank, 512, torch.float64)
    dists = [st.consensus_distance(x)]
    for _ in range(rounds):
        st.neighbor_average(x, inplace=True)
        dists.append(st.consensus_distance(x))
    return dists


def test_consensus_distance_shrinks_at_the_spectral_rate() -> None:
    world, rounds = 8, 30
    dists = run_ranks(_consensus, world, rounds)[0]
    rate = 1.0 - st.topology.ring(world).spectral_gap()  # per-round contraction of ‖X − X̄‖
    for t, d in enumerate(dists):
        assert d <= dists[0] * rate ** (2 * t) * (1 + 1e-9), (t, d)
    # Asymptotically the second eigenvector dominates: the observed rate equals the predicted one.
    observed = math.sqrt(dists[-1] / dists[-2])
    assert observed == pytest.approx(rate, rel=1e-3)


def _one_peer(rank: int, world: int) -> tuple[float, float]:
    st.init(topology="one_peer_exponential", timeout=timedelta(seconds=60))
    x = _x(rank, 257, torch.float64)
    mean = torch.stack([_x(r, 257, torch.float64) for r in range(world)]).mean(0)
    rounds = int(math.log2(world))
    for _ in range(rounds - 1):
        st.neighbor_average(x, inplace=True)
    before = float((x - mean).abs().max())
    st.neighbor_average(x, inplace=True)
    return before, float((x - mean).abs().max())


@pytest.mark.parametrize("world", [4, 8])
def test_one_peer_exponential_is_exact_after_log2_rounds(world: int) -> None:
    for rank, (before, after) in run_ranks(_one_peer, world).items():
        assert before > 1e-3, rank  # not yet the average one round earlier
        assert after < 1e-12, rank


# --- async handle, stats, set_topology -------------------------------------------------------------
def _async_and_stats(rank: int, world: int) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    a = _x(rank, 1000, torch.float32)
    b = _x(rank + 50, 200, torch.float64)
    ha = st.neighbor_average_async(a, name="a")
    hb = st.neighbor_average_async(b, name="b")
    ya, yb = ha.wait(), hb.wait()
    ref_a = st.neighbor_average(a, name="a2")
    s = st.stats()
    st.set_topology("fully_connected")
    mean = torch.stack([_x(r, 1000, torch.float64) for r in range(world)]).mean(0)
    exact = st.neighbor_average(_x(rank, 1000, torch.float64), name="c")
    return {
        "a_matches": torch.allclose(ya, ref_a),
        "b_changed": not torch.equal(yb, b),
        "stats": s,
        "exact": float((exact - mean).abs().max()),
        "neighbors": st.neighbors(),
    }


def test_async_rounds_stats_and_set_topology() -> None:
    world = 4
    for rank, r in run_ranks(_async_and_stats, world).items():
        assert r["a_matches"] and r["b_changed"]
        s = r["stats"]
        assert s["rounds"] == 3
        # Ring: two neighbours, each sent and received the whole tensor.
        expected = 2 * (1000 * 4 + 200 * 8 + 1000 * 4)
        assert s["bytes_sent"] == expected and s["bytes_received"] == expected
        assert s["transfer_seconds"] > 0.0  # three rounds of real messages took time
        assert r["exact"] < 1e-12
        assert r["neighbors"] == [q for q in range(world) if q != rank]


# --- mismatched tensors ----------------------------------------------------------------------------
def _mismatch(rank: int, world: int) -> str:
    st.init(topology="ring", timeout=timedelta(seconds=30))
    d = 12 if rank == 2 else 10
    try:
        st.neighbor_average(torch.zeros(d), name="params")
    except st.MismatchError as e:
        return str(e)
    return "no error"


def test_mismatched_sizes_raise_on_every_rank() -> None:
    for rank, msg in run_ranks(_mismatch, 4).items():
        assert "rank(s) [2] have shape (12,)" in msg, (rank, msg)
        assert "rank(s) [0, 1, 3] have shape (10,)" in msg, (rank, msg)


def _topology_disagreement(rank: int, world: int) -> str:
    try:
        st.init(topology="ring" if rank != 1 else "star", timeout=timedelta(seconds=30))
    except ValueError as e:
        return str(e)
    return "no error"


def test_ranks_disagreeing_on_topology_raise() -> None:
    for rank, msg in run_ranks(_topology_disagreement, 4).items():
        assert "ranks disagree on the topology: ranks [1]" in msg, (rank, msg)


# --- dead and stalled peers ------------------------------------------------------------------------
def _peer_failure(rank: int, world: int, victim: int, how: str, timeout_s: float) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=timeout_s))
    x = torch.ones(10_000)
    st.neighbor_average(x, name="x")  # one healthy round everywhere
    st.neighbor_average(x, name="x")
    if rank == victim:
        if how == "kill":
            os._exit(17)
        os.kill(os.getpid(), signal.SIGSTOP)  # stalls; the parent kills it afterwards
    t0 = time.monotonic()
    for _ in range(5):
        try:
            st.neighbor_average(x, name="x")
        except st.PeerError as e:
            return {"elapsed": time.monotonic() - t0, "message": str(e), "peer": e.peer, "aborted": e.aborted}
    return {"elapsed": time.monotonic() - t0, "message": "no error"}


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_dead_or_stalled_peer_raises_peer_error_within_timeout(how: str) -> None:
    world, victim, timeout_s = 4, 3, 6.0
    results = run_ranks(_peer_failure, world, victim, how, timeout_s, allow_missing={victim}, timeout=90)
    neighbours = st.topology.ring(world).neighbors(victim)
    for rank in neighbours:
        r = results[rank]
        assert "neighbour 3" in r["message"], r
        assert r["peer"] == victim and not r["aborted"], r  # the blamed rank, without reading the message
        assert r["elapsed"] < timeout_s + 3.0, r
    for rank, r in results.items():
        assert r["message"] != "no error", (rank, r)  # every survivor learns of the failure
