"""Setting up a wrapped optimizer's phases on its flat buffers: at construction, and after a model move."""

from __future__ import annotations

import warnings

import torch

from saddle_torch.comm import crc_of
from saddle_torch.errors import DifferentStartWarning, PeerError
from saddle_torch.flat import FlatParameters
from saddle_torch.gossip import GossipContext
from saddle_torch.optim.phases import SaddleRuntime


def handshake(rt: SaddleRuntime, flat: FlatParameters) -> None:
    """The construction's collectives: every phase's set-up (names, γ, CHOCO's start), the same-start check.

    Under ``init(elastic=True)`` a rank dying or stalling during them is survived as in a step: the
    survivors agree on the new membership and form a new group (``recover`` at step 0), and every
    one of them then sets up without collectives (a rank may have finished these handshakes and
    met the failure in its first step instead); names register, CHOCO starts and γ is resolved at the
    first round, on every survivor alike.
    """
    ctx = rt.ctx
    try:
        phases(rt, flat)
        warn_if_ranks_differ(ctx, flat)
    except PeerError as exc:
        if ctx.elastic is None:
            raise
        ctx.elastic.recover(exc, 0)  # FencedError if the others went on without this rank
        phases(rt, flat, collective=False)


def phases(rt: SaddleRuntime, flat: FlatParameters, collective: bool = True) -> None:
    """Set up everything that lives on the flat buffers: x_prev and the algorithm's phases.

    Collective: each phase's :meth:`~saddle_torch.optim.phases.Phase.prime` (gossip names registered
    with the same layout and codec on every rank, ``gamma="auto"`` resolved, CHOCO started at the
    common initial model). Without ``collective`` (a process joining an elastic job, or after a
    membership change during set-up) that happens at the first round, as on the members after
    their membership change.
    """
    rt.flat = flat
    rt.x_prev = {key: torch.zeros_like(x) for key, x in flat.buffers.items()}
    rt.phases = [p.build(rt) for p in rt.recipe]
    if collective:
        for p in rt.phases:
            p.prime(rt)


def follow_model(rt: SaddleRuntime) -> None:
    """Make the flat buffers hold the parameters again after the model was moved (at a step's start).

    A move to the same device and dtype (Hugging Face ``Trainer``/accelerate's ``model.to(device)``
    copies every parameter) is followed transparently: values are copied back into the buffers,
    which keeps all optimizer and gossip state. A move to another device or dtype before the first
    step rebuilds the buffers and the algorithm's state (collective: every rank must have moved
    its model the same way, which frameworks do).

    Raises:
        RuntimeError: the parameters changed device, dtype or shape after steps were taken (their
            momentum and gossip state live on the old buffers); move the model before training.
    """
    flat = rt.flat
    if not flat.moved() and not flat.layout_changed():
        return
    if not flat.layout_changed():
        flat.repoint()
        return
    if rt.step > 0 or rt.run is not None:
        raise RuntimeError(
            f"the model's parameters moved to another device or dtype after {rt.step} step(s) of "
            "DistributedOptimizer; its momentum and gossip state live on the old buffers. Move the model "
            "(model.to(...)) before the first step, or wrap the optimizer after moving it"
        )
    phases(rt, FlatParameters(rt.optimizer.param_groups))


def warn_if_ranks_differ(ctx: GossipContext, flat: FlatParameters) -> None:
    """Warn on every rank when the ranks start from different models (collective: one all-gather).

    Decentralized training averages models that started together; different initial weights (a
    forgotten ``broadcast_parameters``) train, but the first rounds spend themselves pulling unrelated
    models together.
    """
    every = ctx.door.agree(
        [crc_of(flat.buffers.values())], what="checking that every rank starts from the same model"
    )
    differ = [r for r, t in enumerate(every) if t != every[0]]
    if differ:
        warnings.warn(
            f"DistributedOptimizer: the model of rank(s) {differ} differs from rank 0's. Call "
            "saddle_torch.broadcast_parameters(model.state_dict(), root_rank=0) before wrapping the "
            "optimizer so that every rank starts from the same weights",
            DifferentStartWarning,
            stacklevel=3,
        )


__all__ = ["follow_model", "handshake", "phases", "warn_if_ranks_differ"]
