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


def _by_name(spec: Any, n: int, weights: str) -> _topology.Topology | None:
    if isinstance(spec, str):
        try:
            return _topology.resolve(spec, n, weights)
        except (ValueError, RuntimeError):
            return None
    return None


def adjacency_of(topology: _topology.Topology) -> list[list[int]]:
    """Every rank's neighbours over all phases (no self-loops)."""
    return [
        sorted({j for step in range(topology.period) for j in topology.neighbors(i, step)} - {i})
        for i in range(topology.size)
    ]


def grow(
    spec: Any, survivors: _topology.Topology, n: int, weights: str = "uniform"
) -> tuple[_topology.Topology, list[list[int]] | None]:
    """The topology once joiners are admitted: ``n`` ranks, the survivors' ``survivors.size`` first.

    A family given by name is rebuilt for ``n`` ranks (a ring grows back into a ring). Otherwise the
    survivors' graph with the joiners as a path from the last survivor back to rank 0, Metropolis
    weights; that graph's adjacency is returned too, for the joiners (who never saw the old one) to
    read from the store. ``None`` when the joiners can rebuild the topology by name themselves.
    """
    named = _by_name(spec, n, weights)
    if named is not None:
        return named, None
    m = survivors.size
    adjacency = [set(a) for a in adjacency_of(survivors)] + [set() for _ in range(n - m)]
    for k in range(m, n):
        adjacency[k].add(k - 1)
        adjacency[k - 1].add(k)
    if n > 2:
        adjacency[n - 1].add(0)
        adjacency[0].add(n - 1)
    graph = [sorted(a) for a in adjacency]
    return topology_from_adjacency(graph, f"{survivors.name}+joined({n})"), graph


def topology_from_adjacency(graph: list[list[int]], name: str) -> _topology.Topology:
    """A grown graph with Metropolis weights (what :func:`grow` built, rebuilt by a joiner)."""
    return _topology.from_graph(graph, weights="metropolis", name=name)


def joined_topology_needs_graph(spec: Any, n: int, weights: str) -> bool:
    """Whether a joiner must read the grown graph from the store (it cannot be built by name)."""
    return _by_name(spec, n, weights) is None


def joined_topology(
    spec: Any, n: int, weights: str, published: tuple[list[list[int]], str] | None
) -> _topology.Topology:
    """A joiner's view of :func:`grow`: by name, or the ``(graph, name)`` the members published."""
    named = _by_name(spec, n, weights)
    if named is not None:
        return named
    if published is None:
        raise RuntimeError(f"no published graph for {n} ranks and {spec!r} cannot be built by name")
    return topology_from_adjacency(*published)


__all__ = [
    "adjacency_of",
    "grow",
    "joined_topology",
    "joined_topology_needs_graph",
    "repair",
    "topology_from_adjacency",
]
