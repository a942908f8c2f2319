"""What a framework integration needs: the decentralization options, once, and the two things done with them.

:class:`Decentralized` holds the options every integration takes (the gossip context's and the
optimizer wrap's) and does the two things with them that an integration does: start the gossip context
(:meth:`Decentralized.init`) and wrap the framework's optimizer (:meth:`Decentralized.wrap`).
``saddle_torch.lightning.SaddleStrategy`` and ``saddle_torch.hf.SaddleTrainer`` are built on it; so can
an integration with another trainer::

    setup = saddle_torch.Decentralized(topology="ring", algorithm="q-saddle", rho=0.05)
    setup.init()                                     # after the framework started torch.distributed
    optimizer = setup.wrap(optimizer, model)         # a DistributedOptimizer (unchanged if already one)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from saddle_torch.api.init import init
from saddle_torch.compression import Compression
from saddle_torch.gossip import GossipContext
from saddle_torch.optim import DistributedOptimizer, SaddleRuntime, is_wrapped, runtime_of


@dataclass
class Decentralized:
    """The decentralization options of a framework integration.

    Args:
        topology: gossip graph (any value :func:`saddle_torch.init` accepts).
        weights: ``"uniform"`` or ``"metropolis"`` mixing weights.
        compression: default gossip codec (``None``: exact), e.g. ``"int8"``.
        gossip_timeout: how long a gossip round waits for a neighbour before :class:`PeerError`.
        algorithm: the :func:`~saddle_torch.DistributedOptimizer` algorithm (default ``"q-saddle"``).
        rho: SAM radius.
        optimizer_options: further keyword options of :func:`~saddle_torch.DistributedOptimizer`
            (``order``, ``gamma``, ``beta``, ``qg_adam``, ...).
    """

    topology: Any = "ring"
    weights: str = "uniform"
    compression: Compression | str | None = None
    gossip_timeout: timedelta = timedelta(seconds=300)
    algorithm: str = "q-saddle"
    rho: float = 0.05
    optimizer_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def take(cls, kwargs: dict[str, Any]) -> Decentralized:
        """Pop this class's options out of a framework's keyword arguments (``setup=`` passes one whole).

        Raises:
            TypeError: both ``setup=`` and some of its options were given.
        """
        names = {f.name for f in fields(cls)}
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        setup = kwargs.pop("setup", None)
        if setup is not None:
            if given:
                raise TypeError(f"pass setup= or its options ({', '.join(sorted(given))}), not both")
            return setup
        return cls(**given)

    def init(self) -> GossipContext:
        """Start (or return) the default gossip context on the running process group (collective)."""
        return init(
            topology=self.topology,
            timeout=self.gossip_timeout,
            weights=self.weights,
            compression=self.compression,
        )

    def wrap(self, optimizer: torch.optim.Optimizer, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """``optimizer`` as a :func:`~saddle_torch.DistributedOptimizer` (collective; kept if already one)."""
        if is_wrapped(optimizer):
            return optimizer
        return DistributedOptimizer(
            optimizer, model, algorithm=self.algorithm, rho=self.rho, **self.optimizer_options
        )

    @staticmethod
    def is_wrapped(optimizer: Any) -> bool:
        """Whether ``optimizer`` already is a :func:`~saddle_torch.DistributedOptimizer`."""
        return is_wrapped(optimizer)

    @staticmethod
    def runtime(optimizer: Any) -> SaddleRuntime:
        """The runtime of the DistributedOptimizer inside ``optimizer`` (through framework wrappers)."""
        return runtime_of(optimizer)


__all__ = ["Decentralized"]
