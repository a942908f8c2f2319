"""The topology over the survivors and the membership list's format (no processes needed)."""

from __future__ import annotations

import pytest
import torch

from saddle_torch import topology
from saddle_torch.elastic.membership import parse_alive
from saddle_torch.elastic.repair import repair
from saddle_torch.elastic.runtime import suspects_of


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
    exc = RuntimeError("rank 2: gossip recv with neighbour 3 failed (step 7, timeout 10 s): closed")
    assert suspects_of(exc, members) == [4]
    aborted = RuntimeError("rank 2: gossip recv with neighbour 3 (step 7) aborted: membership change")
    assert suspects_of(aborted, members) == []
