"""The torch.distributed backend ``"saddle"``, registered by ``import saddle_torch``.

    import saddle_torch
    saddle_torch.backend.configure(topology="ring")          # before init_process_group
    torch.distributed.init_process_group("saddle")

``all_reduce(t, op=ReduceOp.AVG)`` on contiguous floating-point CPU tensors is one gossip round:
t_i ← Σ_j w_ij t_j over the current topology. Every other call — SUM/MIN/MAX, integer tensors,
broadcast, all_gather, reduce_scatter, barrier, send/recv — goes unchanged to an inner Gloo group,
so DDP's own bookkeeping stays exact. DDP reduces gradients with SUM (of gradients divided by n):
``configure(gossip_sum=True)`` makes float SUMs gossip too (returning n × the neighbourhood average),
which turns an unmodified DDP loop into gradient gossip — and changes what SUM means on this group.
``configure(compression=...)`` compresses the gossip rounds (float32) with CHOCO error feedback,
kept per tensor buffer — right for DDP's persistent gradient buckets; a static topology is required.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from saddle_torch import _ops
from saddle_torch import topology as _topology
from saddle_torch.compression import Compression
from saddle_torch.compression import resolve as resolve_compression


@dataclass
class BackendConfig:
    """What the next ``init_process_group("saddle")`` in this process builds."""

    topology: Any = "ring"
    weights: str = "uniform"
    gossip_sum: bool = False
    gamma: float = 1.0
    compression: Compression | None = None


_config = BackendConfig()


def configure(
    topology: Any = "ring",
    weights: str = "uniform",
    gossip_sum: bool = False,
    gamma: float = 1.0,
    compression: Compression | str | None = None,
) -> None:
    """Choose the topology (a name, a Topology, a graph), compression and options of the ``saddle`` backend.

    Call it on every rank before ``init_process_group("saddle")``. ``compression`` (e.g. ``"int8"``)
    compresses the gossip rounds with CHOCO error feedback; pair it with ``gamma`` < 1
    (:func:`saddle_torch.compression.tune_gamma`).

    Raises:
        ValueError: ``gamma`` outside (0, 1].
    """
    global _config
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    _config = BackendConfig(topology, weights, gossip_sum, gamma, resolve_compression(compression))


def _create(store: dist.Store, rank: int, size: int, timeout: timedelta) -> Any:
    inner = dist.ProcessGroupGloo(store, rank, size, timeout)
    topo = _topology.resolve(_config.topology, size, _config.weights)
    comp = _config.compression
    return _ops.SaddleBackend(
        inner,
        topo._native,
        timeout.total_seconds(),
        _config.gossip_sum,
        _config.gamma,
        comp.native if comp is not None else None,
        comp.error_feedback if comp is not None else True,
    )


def register() -> None:
    """Register ``"saddle"`` with torch.distributed (idempotent)."""
    if "saddle" not in dist.Backend.backend_list:
        dist.Backend.register_backend("saddle", _create, devices=["cpu"])


def gossip_stats(group: dist.ProcessGroup | None = None) -> dict[str, float]:
    """Gossip counters of a ``saddle`` group's backend: bytes sent/received, rounds, wait time."""
    import torch

    backend = (group or dist.group.WORLD)._get_backend(torch.device("cpu"))
    if not isinstance(backend, _ops.SaddleBackend):
        raise ValueError("this process group does not use the saddle backend")
    return dict(backend.gossip_stats())


__all__ = ["BackendConfig", "configure", "gossip_stats", "register"]
