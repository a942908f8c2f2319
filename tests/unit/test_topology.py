import networkx as nx
import numpy as np
import pytest
import torch

from saddle_torch import topology as T


def _gap_numpy(w: torch.Tensor) -> float:
    eig = np.sort(np.abs(np.linalg.eigvalsh(w.numpy())))[::-1]
    return 1.0 - eig[1]


@pytest.mark.parametrize(
    "topo",
    [
        T.ring(8),
        T.torus(3, 4),
        T.fully_connected(5),
        T.star(6),
        T.random_regular(10, 4, seed=3),
        T.ring(7, "metropolis"),
        T.star(5, "metropolis"),
    ],
    ids=lambda t: t.name,
)
def test_symmetric_topologies_gap_matches_dense_eigensolve(topo: T.Topology) -> None:
    w = topo.mixing_matrix()
    assert torch.allclose(w, w.T)
    assert torch.allclose(w.sum(0), torch.ones(topo.size, dtype=torch.float64))
    assert torch.allclose(w.sum(1), torch.ones(topo.size, dtype=torch.float64))
    assert topo.spectral_gap() == pytest.approx(_gap_numpy(w), abs=1e-10)


def test_weights_and_neighbors_api() -> None:
    r = T.ring(6)
    assert r.neighbors(0) == [1, 5]
    assert r.weights(0) == pytest.approx({0: 1 / 3, 1: 1 / 3, 5: 1 / 3})
    e = T.exponential(8)
    assert e.out_neighbors(0) == [1, 2, 4] and e.in_neighbors(0) == [4, 6, 7]
    assert not e.symmetric
    p = T.one_peer_exponential(8)
    assert p.period == 3
    assert [p.out_neighbors(0, s) for s in range(4)] == [[1], [2], [4], [1]]
    assert p.weights(3, 1) == {3: 0.5, 1: 0.5}


def test_exponential_gap_from_singular_values() -> None:
    e = T.exponential(8)
    w = e.mixing_matrix().numpy()
    sv = np.sort(np.linalg.svd(w, compute_uv=False))[::-1]
    assert e.spectral_gap() == pytest.approx(1 - sv[1], abs=1e-10)


def test_user_graphs_networkx_list_dict() -> None:
    g = nx.cycle_graph(5)
    a = T.from_graph(g)
    b = T.from_graph([[1, 4], [0, 2], [1, 3], [2, 4], [3, 0]])
    c = T.from_graph({i: [(i + 1) % 5, (i - 1) % 5] for i in range(5)})
    assert torch.equal(a.mixing_matrix(), T.ring(5).mixing_matrix())
    assert torch.equal(a.mixing_matrix(), b.mixing_matrix())
    assert torch.equal(a.mixing_matrix(), c.mixing_matrix())
    m = T.from_matrix(T.ring(5).mixing_matrix())
    assert m.spectral_gap() == pytest.approx(T.ring(5).spectral_gap())


@pytest.mark.parametrize(
    "build,needle",
    [
        (lambda: T.from_graph({0: [1], 1: [], 2: [1]}), "edge (0, 1) has no reverse"),
        (lambda: T.from_graph([[0, 1], [0]]), "self-loop at rank 0"),
        (lambda: T.from_graph([[1], [0, 7]]), "neighbour 7, out of range"),
        (lambda: T.from_graph(nx.Graph([(0, 1), (2, 3)])), "disconnected: rank(s) 2, 3"),
        (lambda: T.from_graph(nx.DiGraph([(0, 1), (1, 0), (1, 2)])), "edge (1, 2)"),
        (lambda: T.from_matrix([[0.5, 0.4], [0.5, 0.6]]), "row of rank 0 sums to 0.9"),
        (lambda: T.from_matrix([[0.5, 0.5], [0.7, 0.3]]), "column of rank 0"),
        (lambda: T.from_matrix([[1.0, 0.0, 0.0]]), "square"),
        (lambda: T.ring(4, "max-degree"), "weights must be one of"),
        (lambda: T.random_regular(5, 3), "n·d must be even"),
        (lambda: T.resolve(T.ring(8), 4), "has 8 ranks but the world has 4"),
        (lambda: T.resolve("hypercube", 4), "unknown topology 'hypercube'"),
    ],
)
def test_validation_errors_name_the_fault(build, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        build()
    assert needle in str(info.value)


def test_resolve_names() -> None:
    assert T.resolve("torus", 12).name == "torus(3x4)"
    assert T.resolve("random_regular:4:7", 10).neighbors(0) == T.random_regular(10, 4, 7).neighbors(0)
    assert T.resolve("one_peer_exponential", 16).period == 4
