"""Non-IID splits of a labelled data set across ranks, deterministic per seed.

Every rank builds the same partition from the same labels and seed, then iterates its own part::

    part = DirichletPartition(labels, n=st.size(), alpha=0.1, seed=0)
    loader = DataLoader(train, batch_size=32, sampler=part.sampler(st.rank(), seed=0))
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        ...

:class:`DirichletPartition` is the label split of Hsu et al. (2019) used by the QGM and SADDLe papers;
:class:`ShardPartition` the pathological split of McMahan et al. (2017).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

LabelsLike = Sequence[int] | np.ndarray | torch.Tensor

# Widest class histogram that summary() prints column by column; wider ones are summarised.
_MAX_SUMMARY_CLASSES = 16


def _as_labels(labels: LabelsLike) -> np.ndarray:
    """Labels as a 1-D int64 array of non-negative class ids."""
    if isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    else:
        arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError("labels is empty")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("labels must be integer class ids")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"labels must be integer class ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"labels must be non-negative class ids, got {int(arr.min())}")
    return arr


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
    return int(value)


def dataset_labels(dataset: Any) -> torch.Tensor:
    """The labels of a data set, without loading its inputs where possible.

    Args:
        dataset: a ``TensorDataset`` (labels = its last tensor), a data set with a ``targets`` or
            ``labels`` attribute (torchvision style), or any data set of ``(input, label)`` pairs.

    Returns:
        A 1-D int64 tensor with one label per sample.
    """
    tensors = getattr(dataset, "tensors", None)
    if tensors:
        return torch.as_tensor(tensors[-1]).long().reshape(-1)
    for attr in ("targets", "labels"):
        if hasattr(dataset, attr):
            return torch.as_tensor(np.asarray(getattr(dataset, attr))).long().reshape(-1)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


class PartitionSampler(Sampler[int]):
    """Yields one rank's indices, reshuffled per epoch like ``DistributedSampler``.

    The order of an epoch depends only on ``(seed, rank, epoch)``, never on the global RNG, so a job
    that restores a checkpoint and calls ``set_epoch`` sees the same order again.
    """

    def __init__(self, indices: Sequence[int], shuffle: bool = True, seed: int = 0, rank: int = 0) -> None:
        """Create the sampler.

        Args:
            indices: the data set indices this rank owns.
            shuffle: reshuffle every epoch; otherwise yield ``indices`` in order.
            seed: base seed of the shuffle.
            rank: mixed into the seed, so ranks of equal size do not share one permutation.
        """
        self.indices = [int(i) for i in indices]
        self.shuffle = shuffle
        self.seed = _check_int("seed", seed, 0)
        self.rank = _check_int("rank", rank, 0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration.

        Raises:
            ValueError: a negative or non-integer epoch.
        """
        self.epoch = _check_int("epoch", epoch, 0)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(self.indices)
        state = np.random.SeedSequence([self.seed, self.rank, self.epoch]).generate_state(1)[0]
        g = torch.Generator().manual_seed(int(state))
        order = torch.randperm(len(self.indices), generator=g).tolist()
        return iter([self.indices[i] for i in order])

    def __len__(self) -> int:
        return len(self.indices)


class Partition:
    """A split of ``len(labels)`` samples over ``n`` ranks; subclasses decide who gets what."""

    def __init__(self, labels: LabelsLike, n: int, num_classes: int | None = None) -> None:
        """Validate the common arguments.

        Args:
            labels: one integer class id per sample.
            n: number of ranks.
            num_classes: number of classes (default: largest label + 1).

        Raises:
            ValueError: empty or non-integer labels, ``n < 1``, or labels ≥ ``num_classes``.
        """
        self.labels = _as_labels(labels)
        self.n = _check_int("n", n, 1)
        top = int(self.labels.max()) + 1
        if num_classes is None:
            num_classes = top
        self.num_classes = _check_int("num_classes", num_classes, 1)
        if top > self.num_classes:
            raise ValueError(f"label {top - 1} is out of range for num_classes={self.num_classes}")
        self._parts: list[list[int]] = []

    def _check_rank(self, rank: int) -> int:
        rank = _check_int("rank", rank, 0)
        if rank >= self.n:
            raise ValueError(f"rank {rank} out of range [0, {self.n})")
        return rank

    def indices(self, rank: int) -> list[int]:
        """The data set indices of ``rank``, sorted ascending.

        Raises:
            ValueError: ``rank`` not in ``[0, n)``.
        """
        return list(self._parts[self._check_rank(rank)])

    def sizes(self) -> list[int]:
        """Number of samples of every rank."""
        return [len(p) for p in self._parts]

    def sampler(self, rank: int, shuffle: bool = True, seed: int = 0) -> PartitionSampler:
        """A ``Sampler`` over ``rank``'s indices; call its ``set_epoch(epoch)`` to reshuffle.

        Args:
            rank: whose indices.
            shuffle: reshuffle per epoch (deterministic in ``seed``, ``rank`` and the epoch).
            seed: seed of the shuffle (independent of the partition's seed).

        Raises:
            ValueError: ``rank`` not in ``[0, n)``.
        """
        return PartitionSampler(self.indices(rank), shuffle=shuffle, seed=seed, rank=rank)

    def histogram(self) -> torch.Tensor:
        """Class counts per rank: an ``n × num_classes`` int64 tensor."""
        hist = np.zeros((self.n, self.num_classes), dtype=np.int64)
        for k, part in enumerate(self._parts):
            if part:
                hist[k] = np.bincount(self.labels[part], minlength=self.num_classes)
        return torch.from_numpy(hist)

    def describe(self) -> str:
        """One line naming the partition and its parameters."""
        return f"{type(self).__name__}(n={self.n})"

    def summary(self) -> str:
        """A small table: per rank, its sample count and class histogram.

        Up to 16 classes get one column each; with more, the table shows the number of classes a rank
        holds and the share of its largest class.
        """
        hist = self.histogram()
        sizes = hist.sum(dim=1)
        lines = [self.describe()]
        if self.num_classes <= _MAX_SUMMARY_CLASSES:
            width = max(5, len(str(int(hist.max()))) + 1)
            head = f"{'rank':>4} {'size':>6} " + "".join(
                f"{f'c{c}':>{width}}" for c in range(self.num_classes)
            )
            lines.append(head)
            for k in range(self.n):
                row = "".join(f"{int(v):>{width}}" for v in hist[k])
                lines.append(f"{k:>4} {int(sizes[k]):>6} {row}")
        else:
            lines.append(f"{'rank':>4} {'size':>6} {'classes':>8} {'top class':>10} {'share':>6}")
            for k in range(self.n):
                present = int((hist[k] > 0).sum())
                top = int(hist[k].argmax())
                share = float(hist[k, top]) / max(int(sizes[k]), 1)
                lines.append(f"{k:>4} {int(sizes[k]):>6} {present:>8} {top:>10} {share:>6.1%}")
        return "\n".join(lines)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"{self.describe()[:-1]}, sizes={self.sizes()})"


class DirichletPartition(Partition):
    """Dirichlet(α) label split (Hsu et al. 2019, as in the QGM and SADDLe code).

    For each class ``c``, its indices are shuffled and proportions ``p ~ Dir(α·1_n)`` are drawn; rank
    ``k`` receives the ``k``-th slice, cut at ``floor(cumsum(p) · |class c|)``, so every index goes to
    exactly one rank. Small α gives each rank few classes (α = 0.1 mild, 0.01 severe, 0.001 extreme);
    large α tends to the IID split.

    No empty ranks: a small α can leave a rank with (almost) nothing. While some rank holds fewer than
    ``min_size`` samples, all class proportions are drawn again from the same random stream (the
    draw is still determined by the seed); after ``max_tries`` draws a ``ValueError`` is raised.
    ``min_size=0`` keeps the first draw whatever it gives.

    ``balance=True`` applies the QGM code's balancing: while the classes are handed out, a rank that
    already holds at least ``len(labels) / n`` samples receives no share of the later classes.
    """

    def __init__(
        self,
        labels: LabelsLike,
        n: int,
        alpha: float,
        seed: int = 0,
        min_size: int = 1,
        balance: bool = False,
        num_classes: int | None = None,
        max_tries: int = 1000,
    ) -> None:
        """Draw the partition.

        Args:
            labels: one integer class id per sample.
            n: number of ranks.
            alpha: Dirichlet concentration α > 0.
            seed: seed of the draw; equal seeds give equal partitions.
            min_size: redraw until every rank holds at least this many samples (0: never redraw).
            balance: stop giving samples to ranks that already hold their even share.
            num_classes: number of classes (default: largest label + 1).
            max_tries: how many draws ``min_size`` may take.

        Raises:
            ValueError: invalid labels, ``n < 1``, ``alpha ≤ 0``, ``min_size · n > len(labels)``, or no
                draw within ``max_tries`` that satisfies ``min_size``.
        """
        super().__init__(labels, n, num_classes)
        alpha = float(alpha)
        if not np.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got {alpha}")
        self.alpha = alpha
        self.seed = _check_int("seed", seed, 0)
        self.min_size = _check_int("min_size", min_size, 0)
        self.balance = bool(balance)
        max_tries = _check_int("max_tries", max_tries, 1)
        total = len(self.labels)
        if self.min_size * self.n > total:
            raise ValueError(
                f"min_size={self.min_size} for each of n={self.n} ranks needs {self.min_size * self.n} "
                f"samples, the data set has {total}"
            )
        rng = np.random.default_rng(self.seed)
        by_class = [np.flatnonzero(self.labels == c) for c in range(self.num_classes)]
        self.tries = 0  # draws taken
        while self.tries < max_tries:
            self.tries += 1
            parts = self._draw(rng, by_class)
            smallest = min(len(p) for p in parts)
            if smallest >= self.min_size:
                break
        else:
            raise ValueError(
                f"no Dirichlet(alpha={alpha}) draw in {max_tries} tries gave every one of {self.n} ranks at "
                f"least min_size={self.min_size} samples (smallest: {smallest}); lower min_size or raise "
                "alpha"
            )
        self._parts = [sorted(int(i) for i in p) for p in parts]

    def _draw(self, rng: np.random.Generator, by_class: list[np.ndarray]) -> list[list[int]]:
        parts: list[list[int]] = [[] for _ in range(self.n)]
        even = len(self.labels) / self.n
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(self.n, self.alpha))
            if self.balance:
                open_ranks = np.array([len(part) < even for part in parts], dtype=np.float64)
                if (p * open_ranks).sum() > 0:
                    p = p * open_ranks
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(chunk.tolist())
        return parts

    def describe(self) -> str:
        """One line naming the partition and its parameters."""
        extra = ", balance=True" if self.balance else ""
        return f"DirichletPartition(n={self.n}, alpha={self.alpha:g}, seed={self.seed}{extra})"


class ShardPartition(Partition):
    """Pathological non-IID split (McMahan et al. 2017): each rank gets a few label-sorted shards.

    The indices are shuffled, stably sorted by label, and cut into ``n · shards_per_rank`` contiguous
    shards of equal size (±1); every rank receives ``shards_per_rank`` shards chosen at random. With
    2 shards per rank, most ranks see at most two classes.
    """

    def __init__(
        self,
        labels: LabelsLike,
        n: int,
        shards_per_rank: int = 2,
        seed: int = 0,
        num_classes: int | None = None,
    ) -> None:
        """Draw the partition.

        Args:
            labels: one integer class id per sample.
            n: number of ranks.
            shards_per_rank: shards each rank receives (≥ 1).
            seed: seed of the shuffle and of the shard assignment.
            num_classes: number of classes (default: largest label + 1).

        Raises:
            ValueError: invalid labels, ``n < 1``, ``shards_per_rank < 1`` or
                ``n · shards_per_rank > len(labels)``.
        """
        super().__init__(labels, n, num_classes)
        self.shards_per_rank = _check_int("shards_per_rank", shards_per_rank, 1)
        self.seed = _check_int("seed", seed, 0)
        shards = self.n * self.shards_per_rank
        if shards > len(self.labels):
            raise ValueError(
                f"n * shards_per_rank = {self.n} * {self.shards_per_rank} = {shards} shards exceed the "
                f"{len(self.labels)} samples"
            )
        rng = np.random.default_rng(self.seed)
        shuffled = rng.permutation(len(self.labels))
        ordered = shuffled[np.argsort(self.labels[shuffled], kind="stable")]
        pieces = np.array_split(ordered, shards)
        owner = rng.permutation(shards)
        self._parts = [
            sorted(
                int(i)
                for s in owner[k * self.shards_per_rank : (k + 1) * self.shards_per_rank]
                for i in pieces[s]
            )
            for k in range(self.n)
        ]

    def describe(self) -> str:
        """One line naming the partition and its parameters."""
        return f"ShardPartition(n={self.n}, shards_per_rank={self.shards_per_rank}, seed={self.seed})"


__all__ = ["DirichletPartition", "ShardPartition", "Partition", "PartitionSampler", "dataset_labels"]
