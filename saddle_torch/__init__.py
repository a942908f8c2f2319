"""saddle_torch: sharpness-aware decentralized training for PyTorch, gossip over Gloo.

Launch with ``torchrun``, call :func:`init`, and average with graph neighbours instead of all-reduce::

    import saddle_torch as st
    st.init(topology="ring")
    x = st.neighbor_average(x)        # x_i ← Σ_j w_ij x_j over i's neighbours
"""

from __future__ import annotations

import atexit
import gc
import os
import socket
import sys
import zlib
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from saddle_torch import backend, compression, errors, hooks, topology
from saddle_torch import compression as compression_module
from saddle_torch import topology as _topology
from saddle_torch.checkpoint import load_checkpoint, save_checkpoint
from saddle_torch.compression import Compression
from saddle_torch.context import GossipContext, GossipHandle, current, set_current
from saddle_torch.errors import (
    CorruptMessageError,
    DifferentStartWarning,
    FencedError,
    MismatchError,
    PeerError,
)
from saddle_torch.flat import FlatParameters
from saddle_torch.optim import ALGORITHMS, DistributedOptimizer

__version__ = "0.1.0"

backend.register()  # torch.distributed backend "saddle"
configure = backend.configure  # options of the "saddle" backend, before init_process_group("saddle")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(
    topology: str | _topology.Topology | Any = "ring",
    timeout: timedelta = timedelta(seconds=300),
    weights: str = "uniform",
    process_group: dist.ProcessGroup | None = None,
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
        compression: default compression of every gossip round (``None``: exact), e.g.
            ``Compression.int8`` or ``Compression.topk(0.1)``; CHOCO error feedback is applied.
        elastic: survive dead and stalled ranks (launch with ``python -m saddle_torch.run``): when a
            rank dies, the others agree on the survivors, rebuild the group and the topology over them
            and carry on from their own models; ``DistributedOptimizer.step`` retries the step on
            the new group (docs/errors.md, "Elastic training"). A rank dropped while it was stalled
            gets :class:`FencedError`. A process the launcher starts to join (``--restarts``,
            ``--join``) waits here until the members admit it at a step boundary; its model and
            optimizer state arrive in ``DistributedOptimizer(...)`` and ``opt.saddle.step`` is the
            step the job is at.

    Returns:
        The :class:`GossipContext` now installed as the default (a second call with the same
        configuration returns the running one).

    Raises:
        ValueError: an invalid topology, or one whose size differs from the world.
        RuntimeError: ``init()`` was already called with another configuration (``shutdown()`` first).
    """
    from saddle_torch import context

    if context._current is not None:
        return _same_init(context._current, topology, timeout, weights, process_group, compression)
    if elastic:
        return _init_elastic(topology, timeout, weights, process_group, compression)
    if process_group is None:
        if not dist.is_initialized():
            if "RANK" not in os.environ:
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", str(_free_port()))
                dist.init_process_group("gloo", rank=0, world_size=1, timeout=timeout)
            else:
                dist.init_process_group("gloo", timeout=timeout)
        process_group = dist.group.WORLD
        try:
            process_group._get_backend(torch.device("cpu"))
        except (RuntimeError, ValueError):
            process_group = dist.new_group(backend="gloo", timeout=timeout)
    size = dist.get_world_size(process_group)
    topo = _topology.resolve(topology, size, weights)
    ctx = GossipContext(process_group, topo, timeout, compression)
    set_current(ctx)
    return ctx


def _init_elastic(
    topology: Any,
    timeout: timedelta,
    weights: str,
    process_group: dist.ProcessGroup | None,
    compression: Compression | str | None,
) -> GossipContext:
    """:func:`init` with ``elastic=True``: the default group is rebuilt on the survivors after a failure."""
    from saddle_torch.elastic.rendezvous import start_job
    from saddle_torch.elastic.repair import repair
    from saddle_torch.elastic.runtime import JOIN_ENV, ElasticRuntime, connect_store, join_job

    if process_group is not None:
        raise ValueError(
            "init(elastic=True) builds its own groups (a new one after every membership change); "
            "do not pass process_group="
        )
    store = connect_store(timeout)
    membership = admitted = None
    changes: list[Any] = []
    if os.environ.get(JOIN_ENV):  # started by the launcher to join a running job (--restarts, --join)
        topo, membership, admitted = join_job(store, topology, weights, timeout)
    elif dist.is_initialized():  # the caller formed the launch group itself
        topo = _topology.resolve(topology, dist.get_world_size(dist.group.WORLD), weights)
    else:  # the launch group, or a smaller one if a rank died before it formed
        world = int(os.environ["WORLD_SIZE"])
        membership, changes = start_job(store, int(os.environ["RANK"]), world, timeout)
        topo = _topology.resolve(topology, world, weights)
        for change in changes:
            topo = repair(topology, topo, [change.previous.index(r) for r in change.members], weights)
    ctx = GossipContext(dist.group.WORLD, topo, timeout, compression)
    ctx.elastic = ElasticRuntime(
        ctx,
        store,
        topology,
        weights,
        join_window=timeout,
        membership=membership,
        joining=admitted,
        changes=changes,
    )
    set_current(ctx)
    return ctx


def _same_init(
    ctx: GossipContext,
    topology: Any,
    timeout: timedelta,
    weights: str,
    process_group: dist.ProcessGroup | None,
    compression: Compression | str | None,
) -> GossipContext:
    """A second :func:`init`: the running context if nothing differs, else a clear error."""
    topo = _topology.resolve(topology, ctx.size, weights)
    comp = compression_module.resolve(compression)
    differ = []
    if ctx.topology_digest(topo) != ctx._digest:
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
    from saddle_torch import context

    ctx = context._current
    set_current(None)
    if ctx is not None:
        ctx.close()
    backend.close_contexts()


def _at_exit() -> None:
    """:func:`shutdown`, then free unreachable objects while threads may still take the GIL.

    A DistributedDataParallel model left in a reference cycle keeps its process group (and its Gloo
    worker threads) alive until the interpreter's final collection; a Gloo thread that frees a tensor
    then asks for the GIL and is ended by pthread_exit, which aborts the process. Collecting here, before
    finalization, destroys such groups while their threads can still finish.
    """
    shutdown()
    gc.collect()


atexit.register(_at_exit)


def is_initialized() -> bool:
    """Whether :func:`init` has been called."""
    from saddle_torch import context

    return context._current is not None


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


def _default_name(tensor: torch.Tensor, codec: Compression | None) -> str:
    name = f"tensor{tuple(tensor.shape)}:{tensor.dtype}".replace("torch.", "")
    return name if codec is None else f"{name}@{codec}"  # CHOCO state belongs to one codec


def neighbor_average_async(
    tensor: torch.Tensor,
    *,
    gamma: float | str = "auto",
    name: str | None = None,
    inplace: bool = False,
    compression: Compression | str | None = None,
) -> GossipHandle:
    """Start one gossip round on ``tensor`` and return a handle whose ``wait()`` gives the result.

    The round computes ``x ← x + γ Σ_j w_ij (x_j − x)`` (``γ = 1``: ``Σ_j w_ij x_j``). Every rank must
    start its rounds in the same order. With ``inplace=True`` the tensor is averaged in place and must
    not be modified before ``wait()``.

    Args:
        tensor: a floating-point tensor (CPU, or CUDA staged through host memory).
        gamma: the consensus step γ in (0, 1], or ``"auto"`` (default): 1 for exact gossip, the value
            :func:`saddle_torch.compression.tune_gamma` picks for a codec on the current topology.
        name: identifies the tensor across ranks (default: derived from shape, dtype and codec). The
            first round under a name checks that every rank has the same shape, dtype and codec.
        inplace: average in place instead of into a copy.
        compression: compress the round (CHOCO state is kept per ``name``); ``None`` uses the default
            given to :func:`init`, ``Compression.none`` forces exact gossip.

    Raises:
        MismatchError: ranks registered different shapes, dtypes or codecs under this name.
        PeerError: (from ``wait()``) a neighbour died or stalled past the timeout.
        CorruptMessageError: (from ``wait()``) a compressed message failed validation.
    """
    ctx = current()
    codec = ctx.compression if compression is None else compression_module.resolve(compression)
    return ctx.start(
        tensor, name or _default_name(tensor, codec), gamma, inplace, snapshot=False, compression=compression
    )


def neighbor_average(
    tensor: torch.Tensor,
    *,
    gamma: float | str = "auto",
    name: str | None = None,
    inplace: bool = False,
    compression: Compression | str | None = None,
) -> torch.Tensor:
    """One synchronous gossip round: returns ``Σ_j w_ij x_j`` (γ = 1); see :func:`neighbor_average_async`."""
    return neighbor_average_async(
        tensor, gamma=gamma, name=name, inplace=inplace, compression=compression
    ).wait()


def _tensors(
    obj: nn.Module | torch.Tensor | Mapping[str, torch.Tensor] | Iterable[Any],
) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, nn.Module):
        return [p for p in obj.parameters()]
    if isinstance(obj, Mapping):
        return [obj[k] for k in sorted(obj)]
    out = []
    for item in obj:
        out.append(item[1] if isinstance(item, tuple) else item)
    return out


def broadcast_parameters(
    state: nn.Module | Mapping[str, torch.Tensor] | Iterable[Any], root_rank: int = 0
) -> None:
    """Copy ``root_rank``'s tensors into every rank's, in place (collective).

    Args:
        state: a ``state_dict()``, a module, or an iterable of tensors / ``(name, tensor)`` pairs.
        root_rank: the rank whose values win.

    In a process that joins a running elastic job this does nothing: the members are training, and
    the model, optimizer and algorithm state arrive from one of them in ``DistributedOptimizer(...)``.
    """
    ctx = current()
    if not 0 <= root_rank < ctx.size:
        raise ValueError(f"root_rank {root_rank} out of range [0, {ctx.size})")
    if ctx.elastic is not None and ctx.elastic.joining is not None:
        return  # joining a running job: the model arrives from a member when the optimizer is wrapped
    tensors = [t for t in _tensors(state) if isinstance(t, torch.Tensor)]
    try:
        _check_same_layout(ctx, tensors, root_rank)
        with torch.no_grad(), errors.peer_failures("broadcast_parameters", ctx.rank):
            for t in tensors:
                if t.device.type == "cpu":
                    dist.broadcast(t, src=root_rank, group=ctx.group)
                else:
                    staged = t.detach().cpu()
                    dist.broadcast(staged, src=root_rank, group=ctx.group)
                    t.copy_(staged)
    except errors.PeerError as exc:
        if ctx.elastic is None:
            raise
        # A rank died during the broadcast: the survivors form a new group and keep the values they
        # hold (the root's where the broadcast reached them, their own elsewhere; gossip pulls them
        # together). The broadcast is not repeated: some survivors may be past it already.
        ctx.elastic.recover(exc, 0)
        print(
            f"saddle_torch.elastic: rank {ctx.elastic.original_rank}: broadcast_parameters was interrupted "
            "by a failure; this rank keeps the values it holds",
            file=sys.stderr,
            flush=True,
        )


def _check_same_layout(ctx: GossipContext, tensors: list[torch.Tensor], root_rank: int) -> None:
    """Raise :class:`MismatchError` on every rank when the ranks' tensors differ in shape or dtype.

    A broadcast into tensors of different sizes aborts inside Gloo; one small all-gather first turns
    that into an error that names the ranks and the first tensor that differs.
    """
    layout = [(tuple(t.shape), str(t.dtype).replace("torch.", "")) for t in tensors]
    mine = torch.tensor([len(layout), zlib.crc32(repr(layout).encode())], dtype=torch.int64)
    every = [torch.empty_like(mine) for _ in range(ctx.size)]
    with errors.peer_failures("checking the tensors of broadcast_parameters", ctx.rank):
        dist.all_gather(every, mine, group=ctx.group)
    if all(torch.equal(t, every[root_rank]) for t in every):
        return
    layouts: list[Any] = [None] * ctx.size
    dist.all_gather_object(layouts, layout, group=ctx.group)
    root = layouts[root_rank]
    differ = [r for r in range(ctx.size) if layouts[r] != root]
    r = differ[0]
    pairs = enumerate(zip(layouts[r], root, strict=False))
    where = next((i for i, (a, b) in pairs if a != b), min(len(layouts[r]), len(root)))
    theirs = layouts[r][where] if where < len(layouts[r]) else "nothing"
    roots = root[where] if where < len(root) else "nothing"
    raise MismatchError(
        f"broadcast_parameters: rank(s) {differ} hold tensors that differ from root rank {root_rank}'s "
        f"({len(layouts[r])} vs {len(root)} tensors; the first difference is tensor {where}: rank {r} has "
        f"{theirs}, rank {root_rank} has {roots}); build the same model on every rank"
    )


def consensus_distance(model_or_tensor: nn.Module | torch.Tensor) -> float:
    """``(1/n) Σ_i ‖x_i − x̄‖²``, the mean squared distance of the ranks' models to their average.

    Collective; uses an exact all-reduce (it is a diagnostic), and returns the same value on every rank.
    """
    ctx = current()
    with torch.no_grad():
        parts = [t.detach().reshape(-1).to("cpu", torch.float64) for t in _tensors(model_or_tensor)]
        x = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
        mean = x.clone()
        dist.all_reduce(mean, group=ctx.group)
        mean /= ctx.size
        d = torch.tensor([float(torch.sum((x - mean) ** 2))], dtype=torch.float64)
        dist.all_reduce(d, group=ctx.group)
    return float(d.item()) / ctx.size


def stats() -> dict[str, float]:
    """Engine counters.

    Keys: ``bytes_sent``, ``bytes_received``, ``rounds``, ``wait_seconds`` (callers blocked in
    ``wait()``), ``transfer_seconds`` (posting to last message, summed over rounds).
    """
    return current().stats()


__all__ = [
    "init",
    "shutdown",
    "is_initialized",
    "rank",
    "size",
    "local_rank",
    "neighbors",
    "set_topology",
    "neighbor_average",
    "neighbor_average_async",
    "broadcast_parameters",
    "consensus_distance",
    "stats",
    "PeerError",
    "FencedError",
    "MismatchError",
    "DifferentStartWarning",
    "CorruptMessageError",
    "Compression",
    "compression",
    "hooks",
    "backend",
    "configure",
    "FlatParameters",
    "DistributedOptimizer",
    "ALGORITHMS",
    "save_checkpoint",
    "load_checkpoint",
    "GossipContext",
    "GossipHandle",
    "topology",
]
