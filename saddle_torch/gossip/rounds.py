"""Posting one gossip round: staging the tensor for the engine, and the handle that completes it.

One staging path for exact and compressed rounds: the engine works on a contiguous CPU tensor — the
result itself when it already is one, else a CPU copy whose mixing delta (or mixed value) is put back
into the result at ``wait()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from saddle_torch import _ops
from saddle_torch.comm import Door
from saddle_torch.compression import Compression
from saddle_torch.gossip.choco import ChocoState, ResidualMonitor
from saddle_torch.gossip.lowrank import LowRankRound, LowRankState, state_for
from saddle_torch.gossip.registry import Names
from saddle_torch.topology import Topology


class RoundParts(Protocol):
    """What posting a round needs of a gossip context."""

    engine: Any
    names: Names
    choco: ChocoState
    lowrank: dict[str, LowRankState]
    door: Door
    rank: int
    topology: Topology


@dataclass
class GossipHandle:
    """An in-flight round (:func:`saddle_torch.neighbor_average_async`); ``wait()`` completes it."""

    engine: Any  # the engine that posted the round (a later membership change does not move it)
    round: Any
    result: torch.Tensor
    staged: torch.Tensor  # CPU tensor the engine works on (the result itself when on CPU)
    snapshot: torch.Tensor | None = None  # staged copy before mixing: wait() adds the mixing delta
    monitor: tuple[ResidualMonitor, torch.Tensor, torch.Tensor] | None = None  # compressed: (monitor, x, x̂)
    _done: bool = field(default=False)
    error: BaseException | None = field(default=None)  # what wait() raised: the round is over, unmixed

    def wait(self) -> torch.Tensor:
        """Complete the round and return the averaged tensor.

        Raises:
            PeerError: a neighbour died or stalled past the timeout.
            CorruptMessageError: a compressed message failed validation (again on every later call).
        """
        if self.error is not None:
            raise self.error
        if not self._done and isinstance(self.round, LowRankRound):
            # Added to the tensor as it is now (it may have moved since start: AWC's snapshot form).
            self.round.wait(self.result)
            self._done = True
        if not self._done:
            try:
                self.engine.finish(self.round)
            except BaseException as err:
                self.error = err
                raise
            if self.monitor is not None:
                monitor, x, x_hat = self.monitor
                monitor.observe(x, x_hat)
            if self.snapshot is not None:  # the caller may have moved result since start: add the delta
                self.result.add_((self.staged - self.snapshot).to(self.result.device))
            elif self.staged is not self.result:
                self.result.copy_(self.staged, non_blocking=False)
            self._done = True
        return self.result

    def done(self) -> bool:
        """Whether every message of the round has arrived (``wait()`` will not block on the network)."""
        return self._done or self.round.done()


def start(
    ctx: RoundParts,
    tensor: torch.Tensor,
    name: str,
    *,
    gamma: float,
    compression: Compression,
    inplace: bool,
    snapshot: bool,
    keep_received: bool = False,
    scatter: list[torch.Tensor] | None = None,
    completion: object | None = None,
    shapes: list[torch.Size] | None = None,
) -> GossipHandle:
    """Post one round of ``name`` (registered) with step γ ``gamma`` (resolved) and its codec.

    ``snapshot``: the caller may change the tensor before ``wait()`` (AWC); the round mixes the
    tensor as it was at ``start``, and ``wait()`` adds the mixing delta. ``scatter``/``completion``:
    the engine's worker finishes the round itself (see :meth:`GossipContext.start`). ``shapes``:
    low-rank gossip's matrices, the shapes of the tensors the flat ``tensor`` is made of.
    """
    if compression.is_lowrank:
        return _start_lowrank(ctx, tensor, name, gamma, compression, inplace, shapes, completion)
    on_worker = completion is not None
    if on_worker and not (inplace and tensor.device.type == "cpu" and tensor.is_contiguous()):
        raise ValueError("a round finished by the engine must gossip a contiguous CPU tensor in place")
    compressed = not compression.is_none
    if compressed and tensor.dtype != torch.float32:
        raise ValueError(f"compressed gossip works on float32 tensors, got {tensor.dtype} for {name!r}")
    step = ctx.names.step_of(name)
    result = tensor if inplace else tensor.clone()
    on_cpu = result.device.type == "cpu" and result.is_contiguous()
    staged = result if on_cpu else result.detach().to("cpu", copy=True).contiguous()
    # A staged copy gets the round's delta added back at wait(): always for CHOCO (the engine copies
    # x − x̂ at start), for exact rounds when the caller may move the tensor meanwhile.
    keep = staged.clone() if not on_cpu and (snapshot or compressed) else None
    monitor = None
    if compressed:
        flat = staged.view(-1)
        x_hat, s = ctx.choco.state(name, step, flat, ctx.door)
        native = ctx.engine.start_compressed(
            flat,
            x_hat,
            s,
            step,
            gamma,
            compression.native,
            compression.error_feedback,
            _ops.name_hash(name),
            scatter or [],
            completion,
        )
        if not on_worker:  # the worker finishes it: no residual check on this thread
            monitor = (ctx.choco.monitor(name, gamma, compression), flat, x_hat)
    else:
        native = ctx.engine.start(
            staged, step, gamma, snapshot and on_cpu, keep_received, scatter or [], completion
        )
    ctx.names.set_step(name, step + 1)
    return GossipHandle(ctx.engine, native, result, staged, keep, monitor, _done=on_worker)


def _start_lowrank(
    ctx: RoundParts,
    tensor: torch.Tensor,
    name: str,
    gamma: float,
    compression: Compression,
    inplace: bool,
    shapes: list[torch.Size] | None,
    completion: object | None,
) -> GossipHandle:
    if completion is not None:
        raise ValueError("low-rank gossip is finished by its caller, not by the engine's worker")
    if not tensor.is_floating_point():
        raise ValueError(f"low-rank gossip averages floating-point tensors, got {tensor.dtype} for {name!r}")
    shapes = shapes if shapes is not None else [tensor.shape]
    state = state_for(ctx.lowrank, name, shapes, compression.rank, _ops.name_hash(name))
    if state.layout.numel != tensor.numel():
        raise ValueError(
            f"shapes of {state.layout.numel} elements for a tensor of {tensor.numel()} ({name!r})"
        )
    step = ctx.names.step_of(name)
    result = tensor if inplace else tensor.clone()
    if not result.is_contiguous():
        raise ValueError(f"low-rank gossip averages contiguous tensors ({name!r})")
    gossip = LowRankRound(
        ctx.engine, state, ctx.topology, ctx.rank, step, result, gamma, compression.iterations
    )
    ctx.names.set_step(name, step + 1)
    return GossipHandle(ctx.engine, gossip, result, result)


__all__ = ["GossipHandle", "RoundParts", "start"]
