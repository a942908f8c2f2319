"""A DDP communication hook that makes DDP decentralized: neighbours average models, not all-reduce.

    import saddle_torch as st
    st.init(topology="ring")
    model = DistributedDataParallel(model)
    model.register_comm_hook(st.hooks.GossipHookState(), st.hooks.gossip_hook)

For each gradient bucket, by default (``mix="params+grads"``), the hook gossips the bucket's
*parameters*, x_i ← Σ_j w_ij x_j (written back into the parameters before the optimizer steps), and
the *gradients*, g_i ← Σ_j w_ij g_j; the optimizer then steps from the mixed model. This is
decentralized SGD: the parameter round pulls the ranks' models together at the topology's spectral
gap, which gradient gossip alone never does. Measured (digits MLP, 4 ranks on a ring, SGD + momentum,
165 steps; docs/port_ddp.md): IID, plain DDP 94.9% per rank, this default 94.3-95.6%; gradients only
at γ = 1 diverged (34.7-68.0%, consensus distance 121), at γ = 0.5 91.6-94.6%. Non-IID (2-3
classes per rank), DDP 93.9%, this default 88.6-94.3% per rank (averaged model 94.3%); gradients
only at γ = 0.5 26.3-37.7%, no better than training alone.

``mix="params"`` (one round per bucket: D-PSGD with local gradients) and ``mix="grads"`` (the old
behaviour, γ defaults to 0.5 there) are available. During the first ``warmup_steps`` iterations the
buckets are averaged exactly (all-reduce), as PowerSGD's hook does. ``compression=`` compresses every
round with CHOCO error feedback kept per bucket and kind. For SAM, quasi-global momentum and the other
SADDLe algorithms use :func:`saddle_torch.DistributedOptimizer`; see docs/port_ddp.md.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations at run time.
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from saddle_torch import _ops
from saddle_torch import context as _context
from saddle_torch.compression import Compression
from saddle_torch.compression import resolve as resolve_compression

MIXES = ("params+grads", "params", "grads")
GRADS_ONLY_GAMMA = 0.5  # gradient gossip with γ = 1 lets the −1/3 mode of a ring's W grow


@dataclass
class GossipHookState:
    """Configuration and progress of :func:`gossip_hook` (picklable; the process group is not kept).

    Args:
        warmup_steps: iterations averaged exactly (all-reduce) before gossip starts.
        gamma: gossip step γ in (0, 1], or ``"auto"`` (default): 1 for exact gossip (0.5 with
            ``mix="grads"``), the tuned value for a codec (:func:`saddle_torch.compression.tune_gamma`).
        mix: what each bucket gossips: ``"params+grads"`` (default), ``"params"`` or ``"grads"``.
        compression: codec for the gossip rounds (``None``: exact gossip), with CHOCO error feedback
            kept per bucket.
        topology: switch the gossip context to this topology when the hook first gossips
            (``None``: keep the one given to :func:`saddle_torch.init`).
        context: the gossip context to use (``None``: :func:`saddle_torch.init`'s default). The
            ``saddle`` backend passes the context it builds on its own group.
    """

    warmup_steps: int = 0
    gamma: float | str = "auto"
    mix: str = "params+grads"
    compression: Compression | str | None = None
    topology: Any = None
    context: Any = field(default=None, repr=False)
    iteration: int = 0
    _topology_set: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be ≥ 0, got {self.warmup_steps}")
        if self.gamma != "auto" and (isinstance(self.gamma, str) or not 0 < self.gamma <= 1):
            raise ValueError(f"gamma must be 'auto' or in (0, 1], got {self.gamma!r}")
        if self.mix not in MIXES:
            raise ValueError(f"mix must be one of {', '.join(MIXES)}; got {self.mix!r}")
        self.compression = resolve_compression(self.compression) or Compression.none

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_topology_set"] = False  # re-applied in the process that unpickles it
        state["context"] = None  # a context holds a process group: rebuilt where it is unpickled
        return state

    def gossip_context(self) -> _context.GossipContext:
        """The context this hook gossips through."""
        return self.context if self.context is not None else _context.current()

    def resolved_gamma(self, ctx: _context.GossipContext) -> float:
        """γ of this hook's rounds on ``ctx`` (``"auto"`` resolved)."""
        comp = None if self.compression is Compression.none else self.compression
        gamma = ctx.resolve_gamma(self.gamma, comp)
        if self.gamma == "auto" and self.mix == "grads":
            gamma = min(gamma, GRADS_ONLY_GAMMA)
        return gamma


def gossip_hook(state: GossipHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: neighbour-average the bucket's parameters and gradients.

    Register with ``ddp_model.register_comm_hook(state, gossip_hook)`` after :func:`saddle_torch.init`
    (the ``saddle`` backend registers it by itself). The rounds are posted at once and the returned
    future is completed by the gossip engine's worker thread once they are mixed, so backward of the
    later buckets overlaps the gossip. Exact all-reduce during the warm-up.

    Raises:
        PeerError: a neighbour died or stalled past the timeout (DDP re-raises the future's error from
            ``backward()``, as a ``RuntimeError`` that carries the ``PeerError`` message).
    """
    ctx = state.gossip_context()
    buffer = bucket.buffer()
    if bucket.is_last():
        state.iteration += 1
    if state.iteration - (1 if bucket.is_last() else 0) < state.warmup_steps:
        work = dist.all_reduce(buffer, group=ctx.group, async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0].div_(ctx.size))
    if state.topology is not None and not state._topology_set:
        from saddle_torch import topology as _topology

        ctx.set_topology(_topology.resolve(state.topology, ctx.size))
        state._topology_set = True
    gamma = state.resolved_gamma(ctx)
    # DDP rebuilds its buckets after the first iteration: the size is part of the name.
    suffix = f"{bucket.index()}/{buffer.numel()}"
    # The engine's worker mixes each round as its messages arrive, writes the mixed parameters back
    # and completes this future: backward goes on with the next buckets meanwhile.
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    completion = _ops.Completion(future, buffer, (state.mix != "grads") + (state.mix != "params"))
    if state.mix != "grads":
        # Every gradient of this bucket is computed: its parameters are free to be overwritten.
        params = [p.detach() for p in bucket.parameters()]
        flat = torch.cat([p.reshape(-1) for p in params])
        ctx.start(
            flat,
            f"ddp/params{suffix}",
            gamma,
            True,
            False,
            compression=state.compression,
            scatter=params,
            completion=completion,
        )
    if state.mix != "params":
        name = f"ddp/grads{suffix}"
        ctx.start(buffer, name, gamma, True, False, compression=state.compression, completion=completion)
    return future


__all__ = ["GossipHookState", "gossip_hook"]
