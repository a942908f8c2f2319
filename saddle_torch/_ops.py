"""The one place that imports the native extension ``saddle_torch._C``."""

from __future__ import annotations

import torch
import torch.distributed  # noqa: F401 - registers c10d::Backend with pybind11, the base of SaddleBackend

from saddle_torch._native import built_against, extension_error

try:
    from saddle_torch import _C
except ImportError as exc:
    raise extension_error(exc, torch.__version__, built_against()) from exc

NativeTopology = _C.Topology
GossipEngine = _C.GossipEngine
Completion = _C.Completion  # completes a torch Future from the engine's worker (the DDP hook)
Mailbox = _C.Mailbox  # point-to-point messages that do not wait for each other (asynchronous push-sum)

ring = _C.ring
torus = _C.torus
exponential = _C.exponential
one_peer_exponential = _C.one_peer_exponential
fully_connected = _C.fully_connected
star = _C.star
random_regular = _C.random_regular
from_undirected = _C.from_undirected
from_matrix = _C.from_matrix

# Tensor operations are the operator library torch.ops.saddle, registered when _C loads; call them
# through saddle_torch.kernels (which restores the project's error classes).
make_codec = _C.make_codec  # a codec object: names the codec and its parameters


# CHOCO state (x̂, s) per gossip name, and the names' codec seeds.
ChocoStore = _C.ChocoStore
name_hash = _C.name_hash
message_seed = _C.message_seed

# The torch.distributed backend "saddle".
SaddleBackend = _C.SaddleBackend
