"""``init(elastic=True)``: the gossip context of an elastic job, with its :class:`ElasticRuntime`."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from saddle_torch import topology as _topology
from saddle_torch.comm import group_size, is_initialized, world
from saddle_torch.compression import Compression
from saddle_torch.elastic.membership import Agreement
from saddle_torch.elastic.rendezvous import start_job
from saddle_torch.elastic.repair import repair
from saddle_torch.elastic.runtime import JOIN_ENV, ElasticRuntime, connect_board, join_job
from saddle_torch.gossip import GossipContext


def init_elastic(
    topology: Any, timeout: timedelta, weights: str, compression: Compression | str | None
) -> GossipContext:
    """The default context of an elastic job: its group is rebuilt on the survivors after a failure.

    Under ``python -m saddle_torch.run``: forms the launch group (or a smaller one when a rank died
    before it formed), or — in a process started to join a running job — waits for admission.
    """
    board = connect_board(timeout)
    membership = admitted = None
    changes: list[Agreement] = []
    if os.environ.get(JOIN_ENV):  # started by the launcher to join a running job (--restarts, --join)
        topo, membership, admitted = join_job(board, topology, weights, timeout)
    elif is_initialized():  # the caller formed the launch group itself
        topo = _topology.resolve(topology, group_size(world()), weights)
    else:  # the launch group, or a smaller one if a rank died before it formed
        size = int(os.environ["WORLD_SIZE"])
        membership, changes = start_job(board, int(os.environ["RANK"]), size, timeout)
        topo = _topology.resolve(topology, size, weights)
        for change in changes:
            topo = repair(topology, topo, [change.previous.index(r) for r in change.members], weights)
    ctx = GossipContext(world(), topo, timeout, compression)
    ctx.elastic = ElasticRuntime(
        ctx,
        board,
        topology,
        weights,
        join_window=timeout,
        membership=membership,
        joining=admitted,
        changes=changes,
    )
    return ctx


__all__ = ["init_elastic"]
