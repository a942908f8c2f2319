"""Communication topologies and their mixing weights.

Every generator returns a validated :class:`Topology`. Weights are ``"uniform"`` (the default:
``1/(d_max+1)`` per edge, which is ``1/(deg+1)`` on the regular graphs — ring, torus, exponential,
fully connected, random regular — and keeps W doubly stochastic on irregular ones such as a star) or
``"metropolis"`` (``1/(1+max(deg_i, deg_j))``). Invalid input raises ``ValueError`` naming the rank or
edge at fault.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from saddle_torch import _ops

_WEIGHTS = ("uniform", "metropolis")


class Topology:
    """A validated, possibly time-varying mixing topology over ``size`` ranks.

    Step ``t`` uses phase ``t mod period``; static topologies have period 1.
    """

    def __init__(self, native: Any) -> None:
        self._native = native

    @property
    def name(self) -> str:
        """Human-readable name, e.g. ``ring(8)``."""
        return self._native.name

    @property
    def size(self) -> int:
        """Number of ranks."""
        return self._native.size

    @property
    def period(self) -> int:
        """Number of distinct phases of a time-varying topology (1 when static)."""
        return self._native.period

    @property
    def symmetric(self) -> bool:
        """Whether W is static and symmetric."""
        return self._native.symmetric

    def neighbors(self, rank: int, step: int = 0) -> list[int]:
        """Ranks that ``rank`` sends to or receives from at ``step``, sorted."""
        return list(self._native.neighbors(rank, step))

    def in_neighbors(self, rank: int, step: int = 0) -> list[int]:
        """Ranks whose models ``rank`` receives (and mixes) at ``step``."""
        return [p for p, _ in self._native.in_edges(rank, step)]

    def out_neighbors(self, rank: int, step: int = 0) -> list[int]:
        """Ranks that receive ``rank``'s model at ``step``."""
        return list(self._native.out_neighbors(rank, step))

    def weights(self, rank: int, step: int = 0) -> dict[int, float]:
        """Row ``rank`` of W at ``step`` as ``{j: w_ij}``, self weight included."""
        row = {rank: self._native.self_weight(rank, step)}
        row.update(dict(self._native.in_edges(rank, step)))
        return row

    def mixing_matrix(self, step: int = 0) -> torch.Tensor:
        """W at ``step`` as an ``n×n`` float64 tensor (row i mixes into rank i)."""
        return self._native.mixing_matrix(step)

    def spectral_gap(self) -> float:
        """``1 − σ₂(P)^(1/period)``, P the product of one period (``1 − max_{i≥2}|λ_i|`` if symmetric)."""
        return self._native.spectral_gap()

    def __repr__(self) -> str:
        return f"Topology({self.name}, size={self.size}, period={self.period})"


def _w(weights: str) -> str:
    if weights not in _WEIGHTS:
        raise ValueError(f"weights must be one of {_WEIGHTS}, got {weights!r}")
    return weights


def ring(n: int, weights: str = "uniform") -> Topology:
    """Ring of ``n`` ranks: each averages with its two neighbours."""
    return Topology(_ops.ring(n, _w(weights)))


def torus(rows: int, cols: int, weights: str = "uniform") -> Topology:
    """2-D torus of ``rows × cols`` ranks (4 neighbours each, with wrap-around)."""
    return Topology(_ops.torus(rows, cols, _w(weights)))


def exponential(n: int, weights: str = "uniform") -> Topology:
    """Static directed exponential graph: rank i sends to ``i + 2^k mod n``, about log2(n) peers."""
    return Topology(_ops.exponential(n, _w(weights)))


def one_peer_exponential(n: int) -> Topology:
    """Time-varying exponential graph: one peer per step, cycling through the powers of two.

    Reaches the exact average in ``log2(n)`` steps when ``n`` is a power of two.
    """
    return Topology(_ops.one_peer_exponential(n))


def fully_connected(n: int, weights: str = "uniform") -> Topology:
    """Complete graph: one round gives the exact average (the all-reduce reference)."""
    return Topology(_ops.fully_connected(n, _w(weights)))


def star(n: int, weights: str = "uniform") -> Topology:
    """Star with rank 0 at the centre."""
    return Topology(_ops.star(n, _w(weights)))


def random_regular(n: int, d: int, seed: int = 0, weights: str = "uniform") -> Topology:
    """Random connected simple ``d``-regular graph, the same on every rank for the same ``seed``."""
    return Topology(_ops.random_regular(n, d, seed, _w(weights)))


def from_graph(
    graph: Any, weights: str = "uniform", name: str = "user_graph", n: int | None = None
) -> Topology:
    """A topology from a user graph.

    Args:
        graph: adjacency as a list of neighbour lists, a ``{rank: neighbours}`` dict, or a ``networkx``
            graph whose nodes are the integers ``0..n-1``. Edges are undirected: every edge must be
            listed in both directions (a ``networkx.DiGraph`` must contain each reverse edge).
        weights: ``"uniform"`` or ``"metropolis"``.
        name: name shown in errors and logs.
        n: number of ranks; defaults to the number of nodes of the graph.

    Raises:
        ValueError: an asymmetric edge, a self-loop, a rank out of range, or a disconnected graph.
    """
    adjacency = _adjacency(graph, n)
    return Topology(_ops.from_undirected(name, adjacency, _w(weights)))


def from_matrix(w: torch.Tensor | Sequence[Sequence[float]], name: str = "user_matrix") -> Topology:
    """A static topology from an explicit mixing matrix W (non-negative, doubly stochastic, connected).

    Raises:
        ValueError: naming the row or column that does not sum to 1, a negative entry, or disconnection.
    """
    return Topology(_ops.from_matrix(name, torch.as_tensor(w, dtype=torch.float64)))


def _adjacency(graph: Any, n: int | None) -> list[list[int]]:
    if hasattr(graph, "nodes") and hasattr(graph, "adj"):  # networkx
        nodes = list(graph.nodes)
        size = n if n is not None else len(nodes)
        bad = [v for v in nodes if not isinstance(v, int) or not 0 <= v < size]
        if bad:
            raise ValueError(f"graph nodes must be the ranks 0..{size - 1}, found {bad[:5]}")
        adjacency: list[list[int]] = [[] for _ in range(size)]
        for u in nodes:
            adjacency[u] = [int(v) for v in graph.adj[u]]
        return adjacency
    if isinstance(graph, Mapping):
        size = n if n is not None else (max(int(k) for k in graph) + 1 if graph else 0)
        adjacency = [[] for _ in range(size)]
        for k, nbrs in graph.items():
            if not 0 <= int(k) < size:
                raise ValueError(f"rank {k} out of range [0, {size})")
            adjacency[int(k)] = [int(v) for v in nbrs]
        return adjacency
    if isinstance(graph, Iterable):
        adjacency = [[int(v) for v in nbrs] for nbrs in graph]
        if n is not None and n != len(adjacency):
            raise ValueError(f"adjacency lists {len(adjacency)} ranks, expected {n}")
        return adjacency
    raise ValueError(f"cannot build a topology from {type(graph).__name__}")


_BY_NAME = {
    "ring": ring,
    "exponential": exponential,
    "one_peer_exponential": one_peer_exponential,
    "fully_connected": fully_connected,
    "star": star,
}


def resolve(topology: str | Topology | Any, size: int, weights: str = "uniform") -> Topology:
    """A :class:`Topology` for ``size`` ranks from a name, a Topology, a graph or a matrix.

    Names: ``ring``, ``exponential``, ``one_peer_exponential``, ``fully_connected``, ``star``,
    ``torus`` (the most square factorisation of ``size``), ``random_regular:<d>[:<seed>]``.

    Raises:
        ValueError: unknown name, or a topology whose size does not match the world.
    """
    if isinstance(topology, Topology):
        topo = topology
    elif isinstance(topology, str):
        name, *args = topology.split(":")
        if name in _BY_NAME:
            fn = _BY_NAME[name]
            topo = fn(size) if name == "one_peer_exponential" else fn(size, weights)
        elif name == "torus":
            rows = max(r for r in range(1, int(size**0.5) + 1) if size % r == 0)
            topo = torus(rows, size // rows, weights)
        elif name == "random_regular":
            d = int(args[0]) if args else 3
            topo = random_regular(size, d, int(args[1]) if len(args) > 1 else 0, weights)
        else:
            known = sorted([*_BY_NAME, "torus", "random_regular:<d>[:<seed>]"])
            raise ValueError(f"unknown topology {topology!r}; known: {', '.join(known)}")
    elif isinstance(topology, torch.Tensor):
        topo = from_matrix(topology)
    else:
        topo = from_graph(topology, weights, n=size)
    if topo.size != size:
        raise ValueError(f"topology {topo.name} has {topo.size} ranks but the world has {size}")
    return topo


__all__ = [
    "Topology",
    "ring",
    "torus",
    "exponential",
    "one_peer_exponential",
    "fully_connected",
    "star",
    "random_regular",
    "from_graph",
    "from_matrix",
    "resolve",
]
