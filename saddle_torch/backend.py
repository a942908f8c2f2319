"""The torch.distributed backend ``"saddle"``, registered by ``import saddle_torch``.

    import saddle_torch
    saddle_torch.configure(topology="ring")          # optional, before init_process_group
    torch.distributed.init_process_group("saddle")    # the one line (was "gloo")

Every collective of a ``saddle`` group is exact: it is Gloo, plus ``ReduceOp.AVG`` (which Gloo lacks:
a SUM, then a division; integers get the floor of the mean), so metrics, logging and the bookkeeping
of Lightning, torchmetrics or Hugging Face run unchanged. What becomes decentralized is
``DistributedDataParallel``: a DDP model whose process group is a ``saddle`` group gets
:func:`saddle_torch.hooks.gossip_hook` registered when it is built, so its gradient buckets are not
all-reduced; each bucket's parameters and gradients are averaged with the graph neighbours instead
(``configure(mix=...)``). ``configure(ddp_hook=False)`` keeps DDP exact (then register a hook
yourself). See docs/port_ddp.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from saddle_torch import _ops
from saddle_torch import topology as _topology
from saddle_torch.comm import groups
from saddle_torch.compression import Compression, resolve
from saddle_torch.gossip import GossipContext, current_or_none
from saddle_torch.hooks import GossipHookState, gossip_hook


@dataclass(frozen=True)
class BackendConfig:
    """What the DDP models of the next ``saddle`` group gossip (see :func:`configure`)."""

    topology: Any = "ring"
    weights: str = "uniform"
    gamma: float | str = "auto"
    compression: Compression = Compression.none  # type: ignore[attr-defined]
    mix: str = "params+grads"
    warmup_steps: int = 0
    ddp_hook: bool = True


class _Registry:
    """The configuration given to :func:`configure`, and one gossip context per ``saddle`` group.

    torch.distributed calls the backend's constructor with (store, rank, size, timeout) only, so the
    options travel through this object (as they do through torch's own backend registry).
    """

    def __init__(self) -> None:
        self.config = BackendConfig()
        self.contexts: dict[int, GossipContext] = {}  # id(group) → GossipContext of the DDP hooks

    def context(self, group: Any) -> GossipContext:
        """The gossip context of ``group`` (collective the first time: built by every rank)."""
        key = id(group)
        if key in self.contexts:
            return self.contexts[key]
        default = current_or_none()
        if default is not None and default.group is group:
            ctx = default  # st.init() on this group: one engine, one tag sequence
        else:
            size = groups.group_size(group)
            topo = _topology.resolve(self.config.topology, size, self.config.weights)
            seconds = groups.gloo_backend(group).timeout_seconds
            ctx = GossipContext(group, topo, timedelta(seconds=seconds), self.config.compression)
        self.contexts[key] = ctx
        return ctx


_registry = _Registry()


def configure(
    topology: Any = "ring",
    *,
    weights: str = "uniform",
    gamma: float | str = "auto",
    compression: Compression | str | None = None,
    mix: str = "params+grads",
    warmup_steps: int = 0,
    ddp_hook: bool = True,
    gossip_sum: Any = None,
) -> None:
    """Options of the ``saddle`` backend; call it on every rank before ``init_process_group("saddle")``.

    Args:
        topology: the gossip graph of DDP models on the group (a name, a Topology, a graph).
        weights: ``"uniform"`` or ``"metropolis"``.
        gamma: gossip step, or ``"auto"`` (see :class:`saddle_torch.hooks.GossipHookState`).
        compression: codec of the DDP gossip rounds (CHOCO error feedback), e.g. ``"int8"``.
        mix: what DDP gossips per bucket: ``"params+grads"`` (default), ``"params"``, ``"grads"``.
        warmup_steps: DDP iterations all-reduced exactly before gossip starts.
        ddp_hook: register the gossip hook on DDP models of the group (``False``: DDP stays exact).
        gossip_sum: removed; passing it raises.

    Raises:
        RuntimeError: a ``saddle`` process group already exists (its options are fixed: destroy it first).
        ValueError: invalid options, or ``gossip_sum`` (removed: DDP's gradient buckets are gossiped by
            the hook; every collective is exact).
    """
    if gossip_sum is not None:
        raise ValueError(
            "configure(gossip_sum=...) was removed: every collective of a saddle group is now exact, and "
            "DistributedDataParallel models on it gossip through the hook the backend registers"
        )
    if groups.default_backend_name() == "saddle":
        raise RuntimeError(
            "saddle_torch.configure() must come before init_process_group('saddle'): this process "
            "already has a saddle group whose options are fixed (destroy_process_group() first)"
        )
    GossipHookState(warmup_steps=warmup_steps, gamma=gamma, mix=mix)  # validates, as for the hook
    _registry.config = BackendConfig(
        topology, weights, gamma, resolve(compression), mix, warmup_steps, ddp_hook
    )
    _registry.contexts.clear()


def _create(store: Any, rank: int, size: int, timeout: timedelta) -> Any:
    inner = groups.new_gloo_backend(store, rank, size, timeout)
    _topology.resolve(_registry.config.topology, size, _registry.config.weights)  # fail early
    _install_ddp_hook()
    return _ops.SaddleBackend(inner, timeout.total_seconds())


def is_saddle_group(group: Any) -> bool:
    """Whether ``group`` (``None``: the default group) runs on the ``saddle`` backend."""
    group = group or (groups.world() if groups.is_initialized() else None)
    if group is None:
        return False
    try:
        return isinstance(groups.gloo_backend(group), _ops.SaddleBackend)
    except (RuntimeError, ValueError):
        return False


def _install_ddp_hook() -> None:
    """Make DDP models of a ``saddle`` group register the gossip hook when they are built (once)."""
    ddp = torch.nn.parallel.DistributedDataParallel
    if getattr(ddp.__init__, "_saddle_torch", False):
        return
    original = ddp.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        cfg = _registry.config
        if cfg.ddp_hook and is_saddle_group(self.process_group):
            state = GossipHookState(
                warmup_steps=cfg.warmup_steps,
                gamma=cfg.gamma,
                mix=cfg.mix,
                compression=cfg.compression,
                context=_registry.context(self.process_group),
            )
            self.register_comm_hook(state, gossip_hook)

    __init__._saddle_torch = True  # type: ignore[attr-defined]
    ddp.__init__ = __init__


def close_contexts() -> None:
    """Close the gossip contexts of ``saddle`` groups (see :func:`saddle_torch.shutdown`)."""
    for ctx in _registry.contexts.values():
        ctx.close()
    _registry.contexts.clear()


def register() -> None:
    """Register ``"saddle"`` with torch.distributed (idempotent)."""
    groups.register_backend("saddle", _create)


def gossip_stats(group: Any = None) -> dict[str, float]:
    """Gossip counters of the DDP models on a ``saddle`` group (bytes, rounds, wait and transfer time).

    Raises:
        ValueError: ``group`` is not a ``saddle`` group, or no DDP model on it has gossiped yet.
    """
    group = group or groups.world()
    if not is_saddle_group(group):
        raise ValueError("this process group does not use the saddle backend")
    ctx = _registry.contexts.get(id(group))
    if ctx is None:
        raise ValueError("no DistributedDataParallel model on this saddle group has been built yet")
    return ctx.stats()


__all__ = ["BackendConfig", "close_contexts", "configure", "gossip_stats", "is_saddle_group", "register"]
