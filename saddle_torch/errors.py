"""Exceptions a user can catch (see docs/errors.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


class FencedError(RuntimeError):
    """Elastic training: the other ranks went on without this one (it stalled past the timeout).

    Its model is stale; the process must exit (restart it to rejoin). Not a :class:`PeerError`: a
    training loop that retries on ``PeerError`` must not retry this.
    """


class MismatchError(ValueError):
    """Ranks registered different tensors (shape, dtype or compression) under the same gossip name."""


class DifferentStartWarning(UserWarning):
    """The ranks' models differ when :func:`saddle_torch.DistributedOptimizer` wraps them."""


@contextmanager
def peer_failures(what: str, rank: int) -> Iterator[None]:
    """Turn a transport failure of a torch.distributed collective into :class:`PeerError`.

    The handshakes (shape checks, γ broadcast, topology agreement) are Gloo collectives; a rank that
    died or stalled makes them raise Gloo's own ``RuntimeError``, which must reach the user as the
    ``PeerError`` the gossip rounds raise.
    """
    try:
        yield
    except (PeerError, CorruptMessageError):
        raise
    except RuntimeError as exc:
        raise PeerError(
            f"saddle_torch: rank {rank}: {what} failed: a rank died, stalled past the timeout or closed its "
            f"connection. Transport said: {exc}"
        ) from exc


__all__ = [
    "CorruptMessageError",
    "DifferentStartWarning",
    "FencedError",
    "MismatchError",
    "PeerError",
    "peer_failures",
]
