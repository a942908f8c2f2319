"""The default gossip context: the one :func:`saddle_torch.init` creates (like torch's default group)."""

from __future__ import annotations

from saddle_torch.gossip.context import GossipContext

_current: GossipContext | None = None


def current() -> GossipContext:
    """The context created by :func:`saddle_torch.init`.

    Raises:
        RuntimeError: ``init()`` was not called.
    """
    if _current is None:
        raise RuntimeError("saddle_torch is not initialised: call saddle_torch.init() first")
    return _current


def current_or_none() -> GossipContext | None:
    """The default context, or ``None`` before :func:`saddle_torch.init` (and after ``shutdown()``)."""
    return _current


def set_current(ctx: GossipContext | None) -> None:
    """Install ``ctx`` as the default context (``init()``; ``None``: ``shutdown()``)."""
    global _current
    _current = ctx


__all__ = ["current", "current_or_none", "set_current"]
