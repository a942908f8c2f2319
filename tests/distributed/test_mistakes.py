"""Common mistakes raise clear errors on every rank, fast, instead of hanging or aborting in Gloo."""

from __future__ import annotations

import time
import warnings
from datetime import timedelta

import torch
from harness import run_ranks
from torch import nn

import saddle_torch as st

HANDSHAKE_S = 10.0  # a generous bound on one handshake on this machine (measured well under 1 s)


def _catch(fn) -> dict:
    t0 = time.monotonic()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test reports what was raised
        return {"type": type(e).__name__, "message": str(e), "elapsed": time.monotonic() - t0}
    return {"type": "none", "message": "", "elapsed": time.monotonic() - t0}


def _broadcast_shapes(rank: int, world: int) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=30))
    model = nn.Linear(8, 4 if rank != 2 else 5)
    return _catch(lambda: st.broadcast_parameters(model.state_dict(), root_rank=0))


def test_broadcast_parameters_with_different_shapes_names_ranks_and_shapes() -> None:
    for rank, r in run_ranks(_broadcast_shapes, 4, timeout=60).items():
        assert r["type"] == "MismatchError", (rank, r)
        assert "rank(s) [2]" in r["message"] and "rank 2 has ((5" in r["message"], r
        assert "rank 0 has ((4" in r["message"], r
        assert r["elapsed"] < HANDSHAKE_S, r


def _codecs(rank: int, world: int) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=30))
    x = torch.randn(256)
    codec = "int8" if rank % 2 else "none"
    return _catch(lambda: st.neighbor_average(x, name="w", compression=codec))


def test_different_compression_on_ranks_raises_mismatch_at_once() -> None:
    for rank, r in run_ranks(_codecs, 4, timeout=60).items():
        assert r["type"] == "MismatchError", (rank, r)
        assert "another compression" in r["message"], r
        assert r["elapsed"] < HANDSHAKE_S, r


def _different_start(rank: int, world: int, broadcast: bool) -> list[str]:
    st.init(topology="ring", timeout=timedelta(seconds=30))
    torch.manual_seed(rank)  # a different initialisation on every rank
    model = nn.Linear(8, 4)
    if broadcast:
        st.broadcast_parameters(model.state_dict(), root_rank=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        st.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    return [str(w.message) for w in caught if issubclass(w.category, st.DifferentStartWarning)]


def test_different_initial_models_warn_and_name_the_fix() -> None:
    for rank, msgs in run_ranks(_different_start, 4, False, timeout=60).items():
        assert len(msgs) == 1 and "broadcast_parameters" in msgs[0] and "[1, 2, 3]" in msgs[0], (rank, msgs)
    for rank, msgs in run_ranks(_different_start, 4, True, timeout=60).items():
        assert msgs == [], (rank, msgs)


def _init_twice(rank: int, world: int) -> dict:
    a = st.init(topology="ring", timeout=timedelta(seconds=30))
    b = st.init(topology="ring", timeout=timedelta(seconds=30))
    out = {"same": a is b}
    out.update(_catch(lambda: st.init(topology="fully_connected", timeout=timedelta(seconds=30))))
    st.shutdown()
    c = st.init(topology="fully_connected", timeout=timedelta(seconds=30))
    out["after_shutdown"] = c.topology.name
    out["old_engine"] = _catch(lambda: a.engine.start(torch.zeros(4), 0, 1.0, False))["message"]
    return out


def test_init_twice_returns_the_running_context_or_raises() -> None:
    for r in run_ranks(_init_twice, 4, timeout=60).values():
        assert r["same"], r
        assert r["type"] == "RuntimeError" and "already called" in r["message"], r
        assert "fully_connected" in r["message"] and "shutdown()" in r["message"], r
        assert r["after_shutdown"].startswith("fully_connected"), r
        assert "closed" in r["old_engine"], r


def _stalled(rank: int, world: int, timeout_s: float) -> dict:
    import os

    st.init(topology="ring", timeout=timedelta(seconds=timeout_s))
    x = torch.ones(1000)
    st.neighbor_average(x, name="x")
    if rank == 1:
        time.sleep(timeout_s + 3)  # stalls past the timeout: its neighbours give up and leave
    r = _catch(lambda: [st.neighbor_average(x, name="x") for _ in range(3)])
    if rank != 1:
        os._exit(0) if r["type"] == "PeerError" else None  # leave, as a failed job's ranks do
    return r


def test_a_stalled_rank_gets_peer_error_itself() -> None:
    timeout_s = 4.0
    results = run_ranks(_stalled, 4, timeout_s, allow_missing={0, 2, 3}, timeout=90)
    r = results[1]
    assert r["type"] == "PeerError", r
    assert r["elapsed"] < timeout_s + 3.0, r
