"""The topology over the survivors of a membership change."""

from __future__ import annotations

from typing import Any

from saddle_torch import topology as _topology


def _connected(adjacency: list[set[int]]) -> bool:
    seen, todo = {0}, [0]
    while todo:
        for v in adjacency[todo.pop()]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == len(adjacency)


def repair(
    spec: Any, old: _topology.Topology, positions: list[int], weights: str = "uniform"
) -> _topology.Topology:
    """The topology for the ranks at ``positions`` of ``old`` (their old ranks, in new-rank order).

    A topology given by name (``"ring"``, ``"torus"``, ``"exponential"``, ...) is rebuilt for the new
    size: a ring over the survivors in rank order. Otherwise (a user graph or matrix, or a family
    that has no member of the new size) the old graph restricted to the survivors, with Metropolis
    weights; if that graph fell apart, ring edges over the survivors in rank order join the pieces.

    Args:
        spec: what was given to ``init(topology=...)``.
        old: the topology of the last epoch.
        positions: the survivors' ranks in ``old``, ascending.
        weights: ``"uniform"`` or ``"metropolis"`` for a family rebuilt by name.
    """
    n = len(positions)
    if isinstance(spec, str):
        try:
            return _topology.resolve(spec, n, weights)
        except (ValueError, RuntimeError):
            pass  # no member of this family for n ranks: fall back to the old graph
    index = {old_rank: new for new, old_rank in enumerate(positions)}
    adjacency: list[set[int]] = [set() for _ in range(n)]
    for new, old_rank in enumerate(positions):
        for step in range(old.period):
            for j in old.neighbors(old_rank, step):
                if j in index and j != old_rank:
                    adjacency[new].add(index[j])
                    adjacency[index[j]].add(new)
    if n > 1 and not _connected(adjacency):
        for i in range(n):
            adjacency[i].add((i + 1) % n)
            adjacency[(i + 1) % n].add(i)
    if n == 2:
        adjacency = [{1}, {0}]
    return _topology.from_graph(
        [sorted(a) for a in adjacency], weights="metropolis", name=f"{old.name}-survivors({n})"
    )


__all__ = ["repair"]
