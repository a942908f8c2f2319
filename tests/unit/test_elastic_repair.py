"""The topology over the survivors and the membership list's format (no processes needed)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist

from saddle_torch import topology
from saddle_torch.elastic.membership import parse_alive
from saddle_torch.elastic.repair import repair
from saddle_torch.elastic.runtime import suspects_of
from saddle_torch.errors import PeerError


def _edges(t: topology.Topology) -> set[tuple[int, int]]:
    return {(i, j) for i in range(t.size) for s in range(t.period) for j in t.neighbors(i, s) if i < j}


def test_named_family_is_rebuilt_for_the_new_size() -> None:
    t = repair("ring", topology.ring(8), [0, 1, 2, 4, 5, 6, 7])
    assert t.size == 7 and _edges(t) == {(i, (i + 1) % 7) if i < (i + 1) % 7 else (0, 6) for i in range(7)}
    assert torch.allclose(t.mixing_matrix(), topology.ring(7).mixing_matrix())


def test_user_graph_keeps_surviving_edges_with_metropolis_weights() -> None:
    star_plus = {0: [1, 2, 3], 1: [0, 2], 2: [0, 1, 3], 3: [0, 2]}
    old = topology.from_graph(star_plus)
    t = repair(star_plus, old, [0, 2, 3])  # rank 1 died: edges 0-2, 0-3, 2-3 remain
    assert _edges(t) == {(0, 1), (0, 2), (1, 2)}
    w = t.mixing_matrix()
    assert torch.allclose(w, w.T) and torch.allclose(w.sum(1), torch.ones(3, dtype=w.dtype))


def test_graph_that_falls_apart_is_joined_by_a_ring() -> None:
    path = {0: [1], 1: [0, 2], 2: [1, 3], 3: [2]}
    t = repair(path, topology.from_graph(path), [0, 2, 3])  # rank 1 was the only bridge
    assert (0, 1) in _edges(t) and (1, 2) in _edges(t)
    assert t.spectral_gap() > 0


@pytest.mark.parametrize(
    ("raw", "expected"), [(b"3:120;0:121;", {3: 120, 0: 121}), ("", {}), ("1:5;1:6;", {1: 5})]
)
def test_parse_alive(raw: bytes | str, expected: dict[int, int]) -> None:
    assert parse_alive(raw) == expected


def test_suspects_map_the_failed_neighbour_to_its_original_rank() -> None:
    members = [0, 1, 2, 4, 5]  # rank 3 left earlier: current rank 3 is original rank 4
    exc = PeerError("rank 2: gossip recv with neighbour 3 failed (step 7, timeout 10 s): closed", peer=3)
    assert suspects_of(exc, members) == [4]
    aborted = PeerError(
        "rank 2: gossip recv with neighbour 3 (step 7) aborted: membership change", aborted=True
    )
    assert suspects_of(aborted, members) == []
    assert suspects_of(PeerError("broadcast_parameters failed"), members) == []  # a collective blames nobody


def test_grow_rebuilds_a_named_family_and_joiners_can_do_the_same() -> None:
    from saddle_torch.elastic.repair import grow, joined_topology

    survivors = repair("ring", topology.ring(8), [0, 1, 2, 4, 5, 6, 7])
    t, graph = grow("ring", survivors, 8)
    assert graph is None  # nothing to publish: the joiner builds ring(8) itself
    assert torch.equal(t.mixing_matrix(), topology.ring(8).mixing_matrix())
    assert torch.equal(joined_topology("ring", 8, "uniform", None).mixing_matrix(), t.mixing_matrix())


def test_grow_attaches_joiners_to_a_user_graph_as_a_path_back_to_rank_0() -> None:
    from saddle_torch.elastic.repair import grow, joined_topology

    star = {0: [1, 2, 3], 1: [0], 2: [0], 3: [0]}
    t, graph = grow(star, topology.from_graph(star), 6)  # two joiners: ranks 4 and 5
    assert graph is not None
    assert _edges(t) == {(0, 1), (0, 2), (0, 3), (3, 4), (4, 5), (0, 5)}
    w = t.mixing_matrix()
    assert torch.allclose(w, w.T) and torch.allclose(w.sum(1), torch.ones(6, dtype=w.dtype))
    mine = joined_topology(star, 6, "uniform", (graph, t.name))  # what a joiner rebuilds from the store
    assert torch.equal(mine.mixing_matrix(), w) and mine.name == t.name


def test_membership_after_a_growth_lists_survivors_then_joiners() -> None:
    from saddle_torch.elastic.membership import next_members, parse_grow, parse_ids

    assert parse_grow("140:9,8") == (140, [9, 8])
    assert parse_ids("8;9;") == [8, 9] and parse_ids("0,1,2") == [0, 1, 2]
    members, joined = next_members([0, 1, 2, 4], {4: 120, 9: -1, 0: 121, 8: -1, 1: 121})
    assert members == [0, 1, 4, 8, 9] and joined == [8, 9]  # 2 left; joiners by id, after the survivors


def test_donor_is_the_joiners_lowest_surviving_neighbour() -> None:
    from saddle_torch.elastic.transfer import donor_of

    assert donor_of(topology.ring(8), 7, survivors=7) == 0  # neighbours 6 and 0
    assert donor_of(topology.ring(8), 7, survivors=6) == 0  # 6 is a joiner too
    assert donor_of(topology.ring(8), 6, survivors=6) == 5
    assert (
        donor_of(topology.from_graph({0: [1], 1: [0, 2], 2: [1]}), 2, survivors=1) == 0
    )  # no surviving neighbour


def _board() -> Any:
    from saddle_torch.elastic.auth import Signer
    from saddle_torch.elastic.board import Board

    return Board(dist.HashStore(), Signer(b"0123456789abcdef", "job"))


def _closing(board: Any, expected: list[int], window: float) -> tuple[dict[int, int], float]:
    from saddle_torch.elastic.membership import close_list

    t0 = time.monotonic()
    final = close_list(board, 0, expected, timedelta(seconds=window))
    return final, time.monotonic() - t0


def test_the_list_waits_for_a_busy_rank_until_it_registers() -> None:
    """A rank marked busy (blocked in a set-up collective) is waited for past the join window."""
    from saddle_torch.elastic.membership import key

    board = _board()
    board.post(key(0, "alive"), "0:0")
    board.post(key(0, "alive"), "1:0")
    board.put(key(0, "busy", 2))
    threading.Timer(1.5, board.post, args=(key(0, "alive"), "2:0")).start()  # after the window
    final, waited = _closing(board, [0, 1, 2], window=1.0)
    assert final == {0: 0, 1: 0, 2: 0} and waited >= 1.5


def test_a_busy_rank_that_never_registers_is_dropped_after_six_windows() -> None:
    """Gloo's connect gives up after 5 timeouts: a busy rank has the window and BUSY_WINDOWS more."""
    from saddle_torch.elastic.membership import BUSY_WINDOWS, key

    board = _board()
    board.post(key(0, "alive"), "0:0")
    board.put(key(0, "busy", 1))
    final, waited = _closing(board, [0, 1], window=0.3)
    assert BUSY_WINDOWS == 5 and final == {0: 0} and 1.8 <= waited < 5


def test_a_silent_rank_that_is_not_busy_is_dropped_after_one_window() -> None:
    from saddle_torch.elastic.membership import key

    board = _board()
    board.post(key(0, "alive"), "0:0")
    final, waited = _closing(board, [0, 1], window=1.0)
    assert final == {0: 0} and 1.0 <= waited < 2.0  # a busy rank would hold it to 2.0


def test_a_rank_that_registered_and_died_is_left_out_of_the_closed_list() -> None:
    """Registered alive, then the launcher saw it exit: the next group must not wait for it."""
    from saddle_torch.elastic.membership import key

    board = _board()
    board.post(key(0, "alive"), "0:5")
    board.post(key(0, "alive"), "1:5")
    board.put(key("dead", 1))
    final, waited = _closing(board, [0, 1], window=5.0)
    assert final == {0: 5} and waited < 1.0
