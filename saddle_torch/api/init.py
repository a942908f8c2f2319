"""``init()`` and ``shutdown()``: the default gossip context of a process."""

from __future__ import annotations

import gc
from datetime import timedelta
from typing import Any

from saddle_torch import topology as _topology
from saddle_torch.backend import close_contexts
from saddle_torch.comm import gloo_group, group_size
from saddle_torch.compression import Compression, resolve
from saddle_torch.elastic.start import init_elastic
from saddle_torch.gossip import GossipContext, current_or_none, set_current, topology_digest


def init(
    topology: str | _topology.Topology | Any = "ring",
    timeout: timedelta = timedelta(seconds=300),
    weights: str = "uniform",
    process_group: Any = None,
    compression: Compression | str | None = None,
    *,
    elastic: bool = False,
) -> GossipContext:
    """Initialise saddle_torch on every rank (collective).

    Reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and creates
    the Gloo process group when none exists; without that environment it starts a world of one.

    Args:
        topology: a name (``"ring"``, ``"exponential"``, ``"one_peer_exponential"``, ``"torus"``,
            ``"fully_connected"``, ``"star"``, ``"random_regular:<d>[:<seed>]"``), a :class:`Topology`,
            a user graph (adjacency list/dict, networkx graph) or a mixing-matrix tensor.
        timeout: how long a gossip round (and the group's collectives) may wait for a neighbour before
            raising :class:`PeerError`.
        weights: ``"uniform"`` or ``"metropolis"`` for topologies given by name or graph.
        process_group: use this group instead of the default one (it needs a CPU/Gloo backend).
        compression: the default codec of every gossip round, e.g. ``Compression.int8`` or
            ``"topk:0.1"`` (CHOCO error feedback is applied); ``None`` (default): exact. Everywhere
            else in saddle_torch ``compression=None`` means this default.
        elastic: survive dead and stalled ranks (launch with ``python -m saddle_torch.run``): when a
            rank dies, the others agree on the survivors, rebuild the group and the topology over them
            and carry on from their own models; ``DistributedOptimizer.step`` (and the DDP gossip
            hook) retry or line up on the new group (docs/errors.md, "Elastic training"). A rank
            dropped while it was stalled gets :class:`FencedError`. A process the launcher starts to
            join (``--restarts``, ``--join``) waits here until the members admit it at a step
            boundary; its model and optimizer state arrive in ``DistributedOptimizer(...)`` and
            ``opt.saddle.step`` is the step the job is at.

    Returns:
        The :class:`GossipContext` now installed as the default (a second call with the same
        configuration returns the running one).

    Raises:
        ValueError: an invalid topology, or one whose size differs from the world.
        RuntimeError: ``init()`` was already called with another configuration (``shutdown()`` first).
    """
    running = current_or_none()
    if running is not None:
        return _same_init(running, topology, timeout, weights, process_group, compression)
    if elastic:
        if process_group is not None:
            raise ValueError(
                "init(elastic=True) builds its own groups (a new one after every membership change); "
                "do not pass process_group="
            )
        ctx = init_elastic(topology, timeout, weights, compression)
    else:
        group = gloo_group(process_group, timeout)
        topo = _topology.resolve(topology, group_size(group), weights)
        ctx = GossipContext(group, topo, timeout, compression)
    set_current(ctx)
    return ctx


def _same_init(
    ctx: GossipContext,
    topology: Any,
    timeout: timedelta,
    weights: str,
    process_group: Any,
    compression: Compression | str | None,
) -> GossipContext:
    """A second :func:`init`: the running context if nothing differs, else a clear error."""
    topo = _topology.resolve(topology, ctx.size, weights)
    comp = resolve(compression)
    differ = []
    if topology_digest(topo) != ctx.digest:
        differ.append(f"topology {topo.name} (running: {ctx.topology.name})")
    if repr(comp) != repr(ctx.compression):
        differ.append(f"compression {comp} (running: {ctx.compression})")
    if timeout != ctx.timeout:
        differ.append(f"timeout {timeout} (running: {ctx.timeout})")
    if process_group is not None and process_group is not ctx.group:
        differ.append("another process group")
    if differ:
        raise RuntimeError(
            "saddle_torch.init() was already called; this call asks for "
            + ", ".join(differ)
            + ". Call saddle_torch.shutdown() first, or saddle_torch.set_topology() to change the graph"
        )
    return ctx


def shutdown() -> None:
    """Close the default context and the contexts of ``saddle`` groups (idempotent).

    Stops the gossip engine's thread and releases the process group; the group itself stays until
    ``torch.distributed.destroy_process_group()``. Runs by itself at interpreter exit, so a script that
    only calls ``destroy_process_group()`` exits cleanly too.
    """
    ctx = current_or_none()
    set_current(None)
    if ctx is not None:
        ctx.close()
    close_contexts()


def at_exit() -> None:
    """:func:`shutdown`, then free unreachable objects while threads may still take the GIL.

    A DistributedDataParallel model left in a reference cycle keeps its process group (and its Gloo
    worker threads) alive until the interpreter's final collection; a Gloo thread that frees a tensor
    then asks for the GIL and is ended by pthread_exit, which aborts the process. Collecting here, before
    finalization, destroys such groups while their threads can still finish.
    """
    shutdown()
    gc.collect()


def is_initialized() -> bool:
    """Whether :func:`init` has been called."""
    return current_or_none() is not None


__all__ = ["at_exit", "init", "is_initialized", "shutdown"]
