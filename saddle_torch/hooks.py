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
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from saddle_torch import _ops
from saddle_torch import topology as _topology
from saddle_torch.compression import Compression, check_gamma, resolve
from saddle_torch.errors import PeerError
from saddle_torch.gossip import GossipContext, current

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
        compression: codec for the gossip rounds, with CHOCO error feedback kept per bucket;
            ``"none"`` is exact and ``None`` (default), as everywhere in saddle_torch, the default
            given to :func:`saddle_torch.init` (exact unless it was given one).
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
    _fresh: bool = field(default=True, repr=False)  # the next bucket is an iteration's first
    _failure: PeerError | None = field(default=None, repr=False)  # elastic: a round of this iteration failed
    _skipping: bool = field(default=False, repr=False)  # elastic: this iteration lines up, no gossip

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be ≥ 0, got {self.warmup_steps}")
        self.gamma = check_gamma(self.gamma)
        if self.mix not in MIXES:
            raise ValueError(f"mix must be one of {', '.join(MIXES)}; got {self.mix!r}")
        if self.compression is not None:  # None stays "the context's default", resolved with the context
            self.compression = resolve(self.compression)
            if self.compression.is_lowrank and self.mix != "params":
                raise ValueError(
                    "low-rank gossip averages models (a bucket's parameter matrices), not gradients: use "
                    f"mix='params' with it, not mix={self.mix!r}"
                )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_topology_set"] = False  # re-applied in the process that unpickles it
        state["context"] = None  # a context holds a process group: rebuilt where it is unpickled
        state["_failure"] = None
        return state

    def gossip_context(self) -> GossipContext:
        """The context this hook gossips through."""
        return self.context if self.context is not None else current()

    def codec(self, ctx: GossipContext) -> Compression:
        """The codec of this hook's rounds on ``ctx``."""
        return resolve(self.compression, default=ctx.compression)

    def resolved_gamma(self, ctx: GossipContext) -> float:
        """γ of this hook's rounds on ``ctx`` (``"auto"`` resolved; collective for a new codec)."""
        gamma = ctx.resolve_gamma(self.gamma, self.codec(ctx))
        if self.gamma == "auto" and self.mix == "grads":
            gamma = min(gamma, GRADS_ONLY_GAMMA)
        return gamma

    # -- elastic: a failed round is survived at the next iteration's first bucket -------------------
    def _line_up(self, ctx: GossipContext) -> None:
        """Elastic, at an iteration's first bucket: recover from a failure, then line up with the others.

        A round that failed in the last iteration (or an engine the membership watcher aborted) makes
        this rank agree on the survivors with the others and move onto their new group, exactly as
        :func:`saddle_torch.DistributedOptimizer` does between steps; a rank that is behind the most
        advanced survivor then runs its missing iterations without gossip.
        """
        elastic = ctx.elastic
        failure = self._failure
        if failure is None and ctx.engine.broken():
            failure = PeerError("saddle_torch: aborted: the membership is changing", aborted=True)
        if failure is not None:
            self._failure = None
            elastic.recover(failure, self.iteration)
        self._skipping = elastic.behind > 0

    def _survive(self, future: torch.futures.Future, buffer: torch.Tensor, backup: Any = None) -> Any:
        """Elastic: ``future``'s failure is recorded and the bucket keeps its local value instead."""

        def done(fut: torch.futures.Future) -> torch.Tensor:
            try:
                return fut.value()
            except Exception as exc:  # noqa: BLE001 - PeerError, or the transport's own error
                if self._failure is None:
                    self._failure = exc if isinstance(exc, PeerError) else PeerError(str(exc))
                if backup is not None:
                    buffer.copy_(backup)
                return buffer

        return future.then(done)


def _local(buffer: torch.Tensor) -> torch.futures.Future:
    future: torch.futures.Future = torch.futures.Future()
    future.set_result(buffer)
    return future


def gossip_hook(state: GossipHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: neighbour-average the bucket's parameters and gradients.

    Register with ``ddp_model.register_comm_hook(state, gossip_hook)`` after :func:`saddle_torch.init`
    (the ``saddle`` backend registers it by itself). The rounds are posted at once and the returned
    future is completed by the gossip engine's worker thread once they are mixed, so backward of the
    later buckets overlaps the gossip. Exact all-reduce during the warm-up.

    Under ``init(elastic=True)`` a neighbour that dies is survived: the buckets whose rounds failed
    keep their local values for that iteration, and at the next iteration's first bucket the
    survivors agree on the new membership and go on gossiping among themselves (docs/errors.md).

    Raises:
        PeerError: a neighbour died or stalled past the timeout (DDP re-raises the future's error from
            ``backward()`` with its type), unless the job is elastic.
    """
    ctx = state.gossip_context()
    buffer = bucket.buffer()
    iteration = state.iteration  # iterations completed before this bucket's
    first, state._fresh = state._fresh, bucket.is_last()
    if bucket.is_last():
        state.iteration += 1
    elastic = ctx.elastic
    if elastic is not None:
        if first:
            state._line_up(ctx)
        if bucket.is_last() and state._skipping:
            elastic.behind -= 1
        if state._skipping or state._failure is not None:
            return _local(buffer)  # lining up, or this iteration already failed: no more rounds
        try:
            return _post(state, ctx, bucket, buffer, iteration)
        except PeerError as exc:  # a set-up handshake of a new name, or a round refused by a broken engine
            if state._failure is None:
                state._failure = exc
            return _local(buffer)
    return _post(state, ctx, bucket, buffer, iteration)


def _post(
    state: GossipHookState, ctx: GossipContext, bucket: dist.GradBucket, buffer: torch.Tensor, iteration: int
) -> torch.futures.Future[torch.Tensor]:
    elastic = ctx.elastic is not None
    if iteration < state.warmup_steps:
        backup = buffer.clone() if elastic else None  # a failed all-reduce may leave partial sums
        future = ctx.door.all_reduce_async(buffer, what="the DDP hook's warm-up all-reduce").then(
            lambda fut: fut.value().div_(ctx.size)
        )
        return state._survive(future, buffer, backup) if elastic else future
    if state.topology is not None and not state._topology_set:
        ctx.set_topology(_topology.resolve(state.topology, ctx.size))
        state._topology_set = True
    codec = state.codec(ctx)
    if codec.is_lowrank and state.mix != "params":
        raise ValueError(f"low-rank gossip needs GossipHookState(mix='params'), not mix={state.mix!r}")
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
        shapes = [p.shape for p in params]
        name = f"ddp/params{suffix}"
        if codec.is_lowrank:  # a rebuilt bucket may order its matrices anew: fresh factors then
            name += f"/{zlib.crc32(repr(shapes).encode())}"
        ctx.register(name, flat, codec)  # set-up handshake of a new name; resolves "auto" γ
        gamma = state.resolved_gamma(ctx)
        if codec.is_lowrank:  # its rounds finish on this thread (Python math between the exchanges)
            ctx.start(flat, name, gamma=gamma, compression=codec, inplace=True, shapes=shapes).wait()
            with torch.no_grad():
                for p, mixed in zip(params, flat.split([p.numel() for p in params]), strict=True):
                    p.copy_(mixed.view_as(p))
            future.set_result(buffer)  # the gradients stay local (mix="params")
            return state._survive(future, buffer) if elastic else future
        ctx.start(
            flat, name, gamma=gamma, compression=codec, inplace=True, scatter=params, completion=completion
        )
    if state.mix != "params":
        name = f"ddp/grads{suffix}"
        ctx.register(name, buffer, codec)
        gamma = state.resolved_gamma(ctx)
        ctx.start(buffer, name, gamma=gamma, compression=codec, inplace=True, completion=completion)
    return state._survive(future, buffer) if elastic else future


def distributed_data_parallel(
    module: torch.nn.Module, state: GossipHookState | None = None, **ddp_options: Any
) -> torch.nn.parallel.DistributedDataParallel:
    """``DistributedDataParallel(module, **ddp_options)`` with :func:`gossip_hook` registered.

    The same as the two lines of docs/port_ddp.md, except under ``init(elastic=True)``: DDP's
    constructor runs Gloo collectives of its own on the default group (the parameter-shape check and
    the broadcast of the module's state), and a rank that dies meanwhile makes them fail on every other
    rank with Gloo's ``RuntimeError``, ending the job. Here they go through the context's door: the
    survivors agree on the new membership and build the DDP model again on the new group (its state
    check and broadcast run again there). Use it for elastic DDP-hook jobs.

    Args:
        module: the model (on the device DDP should use).
        state: the hook's configuration (default: :class:`GossipHookState()`).
        **ddp_options: DDP's own options, e.g. ``bucket_cap_mb``; not ``process_group`` (the
            default group is the current membership's).

    Raises:
        ValueError: ``process_group`` given.
        PeerError: a rank died while DDP was built and the job is not elastic.
        FencedError: elastic, and the others went on without this rank.
    """
    if "process_group" in ddp_options:
        raise ValueError(
            "distributed_data_parallel() builds DDP on the default group (the current membership's "
            "under init(elastic=True)); drop process_group="
        )
    ctx = current()
    while True:
        try:
            net = ctx.door.run(
                lambda: torch.nn.parallel.DistributedDataParallel(module, **ddp_options),
                what="DistributedDataParallel's set-up",
            )
            break
        except PeerError as exc:
            if ctx.elastic is None:
                raise
            ctx.elastic.recover(exc, 0)  # FencedError if the others went on without this rank
    net.register_comm_hook(state if state is not None else GossipHookState(), gossip_hook)
    return net


__all__ = ["GossipHookState", "distributed_data_parallel", "gossip_hook"]
