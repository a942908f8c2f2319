"""The gossip primitives and queries of the default context: ranks, neighbours, rounds, diagnostics."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from saddle_torch import topology as _topology
from saddle_torch.api.broadcast import tensors_of
from saddle_torch.compression import Compression, check_gamma, resolve
from saddle_torch.gossip import GossipHandle, current


def rank() -> int:
    """This process's rank in the gossip group."""
    return current().rank


def size() -> int:
    """Number of ranks in the gossip group."""
    return current().size


def local_rank() -> int:
    """Rank within this machine (torchrun's ``LOCAL_RANK``; the global rank when unset)."""
    return int(os.environ.get("LOCAL_RANK", rank()))


def neighbors(step: int = 0) -> list[int]:
    """Ranks this rank exchanges with at ``step`` under the current topology."""
    ctx = current()
    return ctx.topology.neighbors(ctx.rank, step)


def set_topology(topo: str | _topology.Topology | Any, weights: str = "uniform") -> None:
    """Switch to another topology (collective; every rank must pass the same one).

    Raises:
        ValueError: invalid topology, wrong size, or ranks that disagree.
    """
    ctx = current()
    ctx.set_topology(_topology.resolve(topo, ctx.size, weights))


def _default_name(tensor: torch.Tensor, codec: Compression) -> str:
    name = f"tensor{tuple(tensor.shape)}:{tensor.dtype}".replace("torch.", "")
    return name if codec.is_none else f"{name}@{codec}"  # CHOCO state belongs to one codec


def neighbor_average_async(
    tensor: torch.Tensor,
    *,
    gamma: float | str = "auto",
    name: str | None = None,
    inplace: bool = False,
    compression: Compression | str | None = None,
    shapes: list[torch.Size] | None = None,
) -> GossipHandle:
    """Start one gossip round on ``tensor`` and return a handle whose ``wait()`` gives the result.

    The round computes ``x ← x + γ Σ_j w_ij (x_j − x)`` (``γ = 1``: ``Σ_j w_ij x_j``). Every rank must
    start its rounds in the same order. With ``inplace=True`` the tensor is averaged in place and must
    not be modified before ``wait()``.

    Args:
        tensor: a floating-point tensor (CPU, or CUDA staged through host memory).
        gamma: the consensus step γ in (0, 1], or ``"auto"`` (default): 1 for exact gossip, the value
            :func:`saddle_torch.compression.tune_gamma` picks for a codec on the current topology
            (resolved once, with the name's first round).
        name: identifies the tensor across ranks (default: derived from shape, dtype and codec). The
            first round under a name checks that every rank has the same shape, dtype and codec.
        inplace: average in place instead of into a copy.
        compression: compress the round (CHOCO state is kept per ``name``); ``"none"`` is exact and
            ``None`` (default) the codec given to :func:`init`. ``"lowrank:r"`` is low-rank gossip
            (PowerGossip: per edge, rank-r projections of the difference of each matrix).
        shapes: low-rank gossip: ``tensor`` is these tensors one after the other (their matrices are
            compressed, the rest averaged exactly); default: ``tensor``'s own shape.

    Raises:
        MismatchError: ranks registered different shapes, dtypes or codecs under this name.
        PeerError: (from ``wait()``) a neighbour died or stalled past the timeout.
        CorruptMessageError: (from ``wait()``) a compressed message failed validation.
    """
    ctx = current()
    codec = resolve(compression, default=ctx.compression)
    return ctx.start(
        tensor,
        name or _default_name(tensor, codec),
        gamma=check_gamma(gamma),
        compression=codec,
        inplace=inplace,
        shapes=shapes,
    )


def neighbor_average(
    tensor: torch.Tensor,
    *,
    gamma: float | str = "auto",
    name: str | None = None,
    inplace: bool = False,
    compression: Compression | str | None = None,
    shapes: list[torch.Size] | None = None,
) -> torch.Tensor:
    """One synchronous gossip round: returns ``Σ_j w_ij x_j`` (γ = 1); see :func:`neighbor_average_async`."""
    return neighbor_average_async(
        tensor, gamma=gamma, name=name, inplace=inplace, compression=compression, shapes=shapes
    ).wait()


def consensus_distance(
    model_or_tensor: nn.Module | torch.Tensor | Mapping[str, Any] | Iterable[Any],
) -> float:
    """``(1/n) Σ_i ‖x_i − x̄‖²``, the mean squared distance of the ranks' models to their average.

    Collective; uses an exact all-reduce (it is a diagnostic), and returns the same value on every rank.
    """
    ctx = current()
    with torch.no_grad():
        parts = [t.detach().reshape(-1).to("cpu", torch.float64) for t in tensors_of(model_or_tensor)]
        x = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
        mean = ctx.door.all_reduce(x.clone(), what="consensus_distance")
        mean /= ctx.size
        d = torch.tensor([float(torch.sum((x - mean) ** 2))], dtype=torch.float64)
        ctx.door.all_reduce(d, what="consensus_distance")
    return float(d.item()) / ctx.size


def stats() -> dict[str, float]:
    """Engine counters.

    Keys: ``bytes_sent``, ``bytes_received``, ``rounds``, ``wait_seconds`` (callers blocked in
    ``wait()``), ``transfer_seconds`` (posting to last message, summed over rounds).
    """
    return current().stats()


__all__ = [
    "consensus_distance",
    "local_rank",
    "neighbor_average",
    "neighbor_average_async",
    "neighbors",
    "rank",
    "set_topology",
    "size",
    "stats",
]
