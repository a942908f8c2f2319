"""saddle_torch: sharpness-aware decentralized training for PyTorch, gossip over Gloo.

Launch with ``torchrun``, call :func:`init`, and average with graph neighbours instead of all-reduce::

    import saddle_torch as st
    st.init(topology="ring")
    x = st.neighbor_average(x)        # x_i ← Σ_j w_ij x_j over i's neighbours

This module is the public surface only; each function lives in the module of its job
(``docs/architecture.md`` has the map).
"""

from __future__ import annotations

import atexit

from saddle_torch import _log, backend, compression, errors, hooks, topology
from saddle_torch._version import __version__ as __version__
from saddle_torch.api.broadcast import broadcast_parameters
from saddle_torch.api.init import at_exit, init, is_initialized, shutdown
from saddle_torch.api.primitives import (
    consensus_distance,
    local_rank,
    neighbor_average,
    neighbor_average_async,
    neighbors,
    rank,
    set_topology,
    size,
    stats,
)
from saddle_torch.checkpoint import load_checkpoint, save_checkpoint
from saddle_torch.compression import Compression
from saddle_torch.errors import (
    AuthenticationError,
    CompressionWarning,
    CorruptMessageError,
    DifferentStartWarning,
    FencedError,
    InternalError,
    MismatchError,
    PeerError,
    SaddleError,
    SaddleWarning,
    StoreLostError,
)
from saddle_torch.flat import FlatParameters
from saddle_torch.frameworks import Decentralized
from saddle_torch.gossip import GossipContext, GossipHandle
from saddle_torch.optim import ALGORITHMS, DistributedOptimizer

_log.configure_from_env()
backend.register()  # torch.distributed backend "saddle"
configure = backend.configure  # options of the "saddle" backend, before init_process_group("saddle")
atexit.register(at_exit)

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
    "SaddleError",
    "PeerError",
    "FencedError",
    "AuthenticationError",
    "StoreLostError",
    "MismatchError",
    "CorruptMessageError",
    "InternalError",
    "SaddleWarning",
    "DifferentStartWarning",
    "CompressionWarning",
    "Compression",
    "compression",
    "errors",
    "hooks",
    "backend",
    "configure",
    "FlatParameters",
    "DistributedOptimizer",
    "ALGORITHMS",
    "Decentralized",
    "save_checkpoint",
    "load_checkpoint",
    "GossipContext",
    "GossipHandle",
    "topology",
]
