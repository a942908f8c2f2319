"""``broadcast_parameters``: every rank starts from the same weights."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from saddle_torch.errors import MismatchError, PeerError
from saddle_torch.gossip import GossipContext, current

log = logging.getLogger("saddle_torch.elastic")


def tensors_of(
    obj: nn.Module | torch.Tensor | Mapping[str, torch.Tensor] | Iterable[Any],
) -> list[torch.Tensor]:
    """The tensors of a module (its parameters), a tensor, a ``state_dict`` (sorted by key) or an iterable."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, nn.Module):
        return list(obj.parameters())
    if isinstance(obj, Mapping):
        return [obj[k] for k in sorted(obj)]
    return [item[1] if isinstance(item, tuple) else item for item in obj]


def broadcast_parameters(
    state: nn.Module | Mapping[str, torch.Tensor] | Iterable[Any], root_rank: int = 0
) -> None:
    """Copy ``root_rank``'s tensors into every rank's, in place (collective).

    Args:
        state: a ``state_dict()``, a module, or an iterable of tensors / ``(name, tensor)`` pairs.
        root_rank: the rank whose values win.

    In a process that joins a running elastic job this does nothing: the members are training, and
    the model, optimizer and algorithm state arrive from one of them in ``DistributedOptimizer(...)``.

    Raises:
        ValueError: ``root_rank`` out of range.
        MismatchError: the ranks' tensors differ in number, shape or dtype.
        PeerError: a rank died during the broadcast (survived under ``init(elastic=True)``).
    """
    ctx = current()
    if not 0 <= root_rank < ctx.size:
        raise ValueError(f"root_rank {root_rank} out of range [0, {ctx.size})")
    if ctx.elastic is not None and ctx.elastic.joining is not None:
        return  # joining a running job: the model arrives from a member when the optimizer is wrapped
    tensors = [t for t in tensors_of(state) if isinstance(t, torch.Tensor)]
    try:
        _check_same_layout(ctx, tensors, root_rank)
        with torch.no_grad():
            for t in tensors:
                staged = t if t.device.type == "cpu" else t.detach().cpu()
                ctx.door.broadcast(staged, root_rank, what="broadcast_parameters")
                if staged is not t:
                    t.copy_(staged)
    except PeerError as exc:
        if ctx.elastic is None:
            raise
        # A rank died during the broadcast: the survivors form a new group and keep the values they
        # hold (the root's where the broadcast reached them, their own elsewhere; gossip pulls them
        # together). The broadcast is not repeated: some survivors may be past it already.
        ctx.elastic.recover(exc, 0)
        log.warning(
            "saddle_torch.elastic: rank %d: broadcast_parameters was interrupted by a failure; this rank "
            "keeps the values it holds",
            ctx.rank,
        )


def _check_same_layout(ctx: GossipContext, tensors: list[torch.Tensor], root_rank: int) -> None:
    """Raise :class:`MismatchError` on every rank when the ranks' tensors differ in shape or dtype.

    A broadcast into tensors of different sizes aborts inside Gloo; one small all-gather first turns
    that into an error that names the ranks and the first tensor that differs.
    """
    layout = [(tuple(t.shape), str(t.dtype).replace("torch.", "")) for t in tensors]
    every = ctx.door.agree(
        [len(layout), zlib.crc32(repr(layout).encode())], what="checking the tensors of broadcast_parameters"
    )
    if all(t == every[root_rank] for t in every):
        return
    layouts = ctx.door.all_gather_object(layout, what="comparing the tensors of broadcast_parameters")
    root = layouts[root_rank]
    differ = [r for r in range(ctx.size) if layouts[r] != root]
    r = differ[0]
    pairs = enumerate(zip(layouts[r], root, strict=False))
    where = next((i for i, (a, b) in pairs if a != b), min(len(layouts[r]), len(root)))
    theirs = layouts[r][where] if where < len(layouts[r]) else "nothing"
    roots = root[where] if where < len(root) else "nothing"
    raise MismatchError(
        f"broadcast_parameters: rank(s) {differ} hold tensors that differ from root rank {root_rank}'s "
        f"({len(layouts[r])} vs {len(root)} tensors; the first difference is tensor {where}: rank {r} has "
        f"{theirs}, rank {root_rank} has {roots}); build the same model on every rank"
    )


__all__ = ["broadcast_parameters", "tensors_of"]
