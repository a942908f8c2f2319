"""Non-IID partitions: coverage, determinism, skew versus α, shards, samplers."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from saddle_torch.data import DirichletPartition, ShardPartition, dataset_labels

CLASSES = 10


def _labels(per_class: int = 200, seed: int = 0) -> np.ndarray:
    y = np.repeat(np.arange(CLASSES), per_class)
    return np.random.default_rng(seed).permutation(y)


def _all_indices(part) -> list[int]:
    return sorted(i for k in range(part.n) for i in part.indices(k))


@pytest.mark.parametrize("alpha", [0.001, 0.1, 1.0, 1000.0])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_dirichlet_covers_every_index_once(alpha, n):
    y = _labels()
    part = DirichletPartition(y, n, alpha, seed=3)
    assert _all_indices(part) == list(range(len(y)))
    assert sum(part.sizes()) == len(y)
    hist = part.histogram()
    assert hist.shape == (n, CLASSES) and hist.dtype == torch.int64
    assert hist.sum(dim=0).tolist() == np.bincount(y).tolist()
    assert min(part.sizes()) >= 1  # min_size=1 by default


def test_dirichlet_deterministic_per_seed():
    y = _labels()
    a = DirichletPartition(y, 5, 0.1, seed=7)
    b = DirichletPartition(torch.as_tensor(y), 5, 0.1, seed=7)  # tensor labels: same split
    c = DirichletPartition(y.tolist(), 5, 0.1, seed=8)
    assert [a.indices(k) for k in range(5)] == [b.indices(k) for k in range(5)]
    assert [a.indices(k) for k in range(5)] != [c.indices(k) for k in range(5)]


def _mean_top_share(hist: torch.Tensor) -> float:
    hist = hist.double()
    return float((hist.max(dim=1).values / hist.sum(dim=1).clamp(min=1)).mean())


def test_dirichlet_skew_follows_alpha():
    y = _labels(500)
    skewed = DirichletPartition(y, 8, 0.01, seed=0).histogram()
    uniform = DirichletPartition(y, 8, 1000.0, seed=0).histogram()
    # α small: each class sits (almost) wholly on one rank, so a rank holds few classes; α large:
    # every class near 1/10 of each rank.
    class_share = (skewed.max(dim=0).values.double() / skewed.sum(dim=0)).mean()
    assert float(class_share) > 0.9
    assert _mean_top_share(skewed) > 0.6
    assert _mean_top_share(uniform) < 0.15
    assert int((uniform == 0).sum()) == 0
    expected = 500 / 8
    assert float((uniform.double() - expected).abs().max()) < 0.25 * expected


def test_dirichlet_min_size_and_balance():
    y = _labels(20)
    part = DirichletPartition(y, 10, 0.01, seed=1, min_size=5)
    assert min(part.sizes()) >= 5 and _all_indices(part) == list(range(len(y)))
    free = DirichletPartition(y, 10, 0.01, seed=1, min_size=0)
    assert _all_indices(free) == list(range(len(y)))
    balanced = DirichletPartition(_labels(500), 8, 0.1, seed=0, balance=True)
    plain = DirichletPartition(_labels(500), 8, 0.1, seed=0)
    assert max(balanced.sizes()) - min(balanced.sizes()) < max(plain.sizes()) - min(plain.sizes())
    assert _all_indices(balanced) == list(range(5000))


def test_dirichlet_rejects_bad_input():
    y = _labels(5)
    with pytest.raises(ValueError, match="alpha"):
        DirichletPartition(y, 2, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        DirichletPartition(y, 2, float("nan"))
    with pytest.raises(ValueError, match="n must be"):
        DirichletPartition(y, 0, 1.0)
    with pytest.raises(ValueError, match="min_size"):
        DirichletPartition(y, 10, 1.0, min_size=6)
    with pytest.raises(ValueError, match="one-dimensional"):
        DirichletPartition(np.zeros((3, 2), dtype=int), 2, 1.0)
    with pytest.raises(ValueError, match="empty"):
        DirichletPartition([], 2, 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        DirichletPartition([0, -1, 2], 2, 1.0)
    with pytest.raises(ValueError, match="integer"):
        DirichletPartition([0.5, 1.0], 2, 1.0)
    with pytest.raises(ValueError, match="num_classes"):
        DirichletPartition([0, 1, 5], 2, 1.0, num_classes=3)
    with pytest.raises(ValueError, match="tries"):
        DirichletPartition(np.zeros(4, dtype=int), 4, 0.001, min_size=1, max_tries=1)
    part = DirichletPartition(y, 2, 1.0)
    with pytest.raises(ValueError, match="rank 2 out of range"):
        part.indices(2)
    with pytest.raises(ValueError, match="rank"):
        part.sampler(-1)


def test_shards():
    y = _labels(100)
    part = ShardPartition(y, 5, shards_per_rank=2, seed=0)
    assert _all_indices(part) == list(range(len(y)))
    assert part.sizes() == [200] * 5  # 10 shards of 100 samples
    hist = part.histogram()
    # Shards of 100 label-sorted samples are exactly one class each: 2 classes per rank.
    assert ((hist > 0).sum(dim=1) == 2).all()
    again = ShardPartition(y, 5, shards_per_rank=2, seed=0)
    assert [part.indices(k) for k in range(5)] == [again.indices(k) for k in range(5)]
    other = ShardPartition(y, 5, shards_per_rank=2, seed=1)
    assert [part.indices(k) for k in range(5)] != [other.indices(k) for k in range(5)]
    uneven = ShardPartition(y[:997], 3, shards_per_rank=4, seed=0)
    assert _all_indices(uneven) == list(range(997))
    assert max(uneven.sizes()) - min(uneven.sizes()) <= 4


def test_shards_reject_bad_input():
    y = _labels(1)
    with pytest.raises(ValueError, match="exceed"):
        ShardPartition(y, 6, shards_per_rank=2)
    with pytest.raises(ValueError, match="shards_per_rank"):
        ShardPartition(y, 2, shards_per_rank=0)
    with pytest.raises(ValueError, match="integer"):
        ShardPartition(y, 2, shards_per_rank=1.5)


def test_sampler_yields_rank_indices_and_reshuffles():
    y = _labels(50)
    part = DirichletPartition(y, 4, 0.5, seed=0)
    for k in range(4):
        s = part.sampler(k, seed=11)
        assert len(s) == len(part.indices(k))
        first = list(s)
        assert sorted(first) == part.indices(k)
        assert list(s) == first  # same epoch, same order
        s.set_epoch(1)
        second = list(s)
        assert sorted(second) == part.indices(k) and second != first
        s.set_epoch(0)
        assert list(s) == first
        assert list(part.sampler(k, seed=11)) == first  # depends on seed, rank and epoch only
    assert list(part.sampler(0, shuffle=False)) == part.indices(0)
    with pytest.raises(ValueError, match="epoch"):
        part.sampler(0).set_epoch(-1)


def test_sampler_in_dataloader():
    y = torch.as_tensor(_labels(20))
    ds = TensorDataset(torch.arange(len(y)), y)
    part = ShardPartition(dataset_labels(ds), 2, shards_per_rank=3, seed=0)
    loader = DataLoader(ds, batch_size=16, sampler=part.sampler(1, seed=0))
    seen = torch.cat([x for x, _ in loader]).tolist()
    assert sorted(seen) == part.indices(1)


def test_summary_table():
    part = DirichletPartition(_labels(30), 3, 0.1, seed=0)
    text = part.summary()
    lines = text.splitlines()
    assert lines[0].startswith("DirichletPartition(n=3, alpha=0.1")
    assert "c9" in lines[1] and len(lines) == 2 + 3
    for k, line in enumerate(lines[2:]):
        assert line.split()[:2] == [str(k), str(part.sizes()[k])]
    many = DirichletPartition(np.arange(100).repeat(3), 2, 1.0, seed=0).summary()
    assert "top class" in many and len(many.splitlines()) == 4
