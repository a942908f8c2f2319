"""A DDP communication hook that gossip-averages gradient buckets instead of all-reducing them.

    import saddle_torch as st
    st.init(topology="ring")
    model = DistributedDataParallel(model)
    model.register_comm_hook(st.hooks.GossipHookState(warmup_steps=10), st.hooks.gossip_hook)

Each bucket becomes ĝ_i = g_i + γ Σ_j w_ij (g_j − g_i) over the neighbours (γ = 1: Σ_j w_ij g_j),
optionally compressed with CHOCO error feedback; during the first ``warmup_steps`` iterations the
buckets are averaged exactly (all-reduce), as PowerSGD's hook does. Gossiping *gradients* keeps the
models identical only as long as the gradients are: the models drift apart by the accumulated
difference of the neighbour-averaged gradients. To gossip *parameters* (what decentralized SGD and
SADDLe do), use :func:`saddle_torch.DistributedOptimizer`; see docs/port_ddp.md.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations at run time.
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from saddle_torch import context
from saddle_torch.compression import Compression
from saddle_torch.compression import resolve as resolve_compression


@dataclass
class GossipHookState:
    """Configuration and progress of :func:`gossip_hook` (picklable; the process group is not kept).

    Args:
        warmup_steps: iterations averaged exactly (all-reduce) before gossip starts.
        gamma: gossip step γ.
        compression: codec for the gossip rounds (``None``: exact gossip), with CHOCO error feedback
            kept per bucket.
        topology: switch the gossip context to this topology when the hook first gossips
            (``None``: keep the one given to :func:`saddle_torch.init`).
    """

    warmup_steps: int = 0
    gamma: float = 1.0
    compression: Compression | str | None = None
    topology: Any = None
    iteration: int = 0
    _topology_set: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or not 0 < self.gamma <= 1:
            raise ValueError(
                f"need warmup_steps ≥ 0 and 0 < gamma ≤ 1, got {self.warmup_steps}, {self.gamma}"
            )
        self.compression = resolve_compression(self.compression) or Compression.none

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_topology_set"] = False  # re-applied in the process that unpickles it
        return state


def _completed(tensor: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(tensor)
    return fut


def gossip_hook(state: GossipHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: neighbour-average the bucket (exact all-reduce during warm-up).

    Register with ``ddp_model.register_comm_hook(state, gossip_hook)`` after :func:`saddle_torch.init`.
    The gossip round runs while DDP waits for this bucket; its future is complete when returned.

    Raises:
        PeerError: a neighbour died or stalled past the timeout.
    """
    ctx = context.current()
    buffer = bucket.buffer()
    if bucket.is_last():
        state.iteration += 1
    if state.iteration - (1 if bucket.is_last() else 0) < state.warmup_steps:
        work = dist.all_reduce(buffer, group=ctx.group, async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0].div_(ctx.size))
    if state.topology is not None and not state._topology_set:
        from saddle_torch import set_topology

        set_topology(state.topology)
        state._topology_set = True
    # DDP rebuilds its buckets after the first iteration: the size is part of the name.
    name = f"ddp/bucket{bucket.index()}/{buffer.numel()}"
    handle = ctx.start(buffer, name, state.gamma, inplace=True, snapshot=False, compression=state.compression)
    return _completed(handle.wait())


__all__ = ["GossipHookState", "gossip_hook"]
