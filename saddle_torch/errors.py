"""Exceptions a user can catch (see docs/errors.md)."""

from __future__ import annotations

from saddle_torch._ops import CorruptMessageError, PeerError

PeerError.__doc__ = (
    "A neighbour died, stalled past the timeout or closed its connection during a gossip round. "
    "The process group is unusable afterwards: restart the job (torchrun --max-restarts) from a checkpoint."
)
PeerError.__module__ = "saddle_torch"
CorruptMessageError.__doc__ = (
    "A compressed gossip message failed validation (truncated, altered, or for another codec or size). "
    "Nothing was written; the CHOCO state of the ranks is no longer consistent: restart from a checkpoint."
)
CorruptMessageError.__module__ = "saddle_torch"


class MismatchError(ValueError):
    """Ranks registered different tensors (shape or dtype) under the same gossip name."""


__all__ = ["PeerError", "MismatchError", "CorruptMessageError"]
