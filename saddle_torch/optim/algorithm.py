"""What an ``algorithm=`` is made of: the flags the step of :mod:`saddle_torch.optim.wrapper` reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    """The ingredients of one decentralized algorithm.

    Attributes:
        name: the ``algorithm=`` string.
        sam: the gradient is sharpness-aware (two passes on the same batch).
        qgm: quasi-global momentum computes the direction; the wrapped optimizer must not add momentum.
        cross: neighbourhood cross-gradients (NGM): a second round of communication per step.
        gossip: average models with neighbours; ``False`` means exact all-reduce of gradients (DDP).
        summary: one line for docs and errors.
    """

    name: str
    sam: bool
    qgm: bool
    cross: bool
    gossip: bool = True
    summary: str = ""

    @property
    def needs_closure(self) -> bool:
        """Whether ``step()`` must re-evaluate the loss (SAM passes, cross-gradients)."""
        return self.sam or self.cross
