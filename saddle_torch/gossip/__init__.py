"""Gossip: the context of a job (group, topology, engine), its names, CHOCO state and rounds."""

from saddle_torch.gossip.choco import ChocoState, ResidualMonitor
from saddle_torch.gossip.context import GossipContext, Recovery, topology_digest
from saddle_torch.gossip.current import current, current_or_none, set_current
from saddle_torch.gossip.rounds import GossipHandle

__all__ = [
    "ChocoState",
    "GossipContext",
    "GossipHandle",
    "Recovery",
    "ResidualMonitor",
    "current",
    "current_or_none",
    "set_current",
    "topology_digest",
]
