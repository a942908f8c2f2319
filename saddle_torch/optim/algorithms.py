"""The registry of ``algorithm=`` names: each is a composition of phases (ALGORITHMS.md has the math).

| name       | gradient            | direction                       | models meet by          |
|------------|---------------------|---------------------------------|-------------------------|
| dsgd       | ∇F                  | the wrapped optimizer (local)   | gossip                  |
| qgm        | ∇F                  | quasi-global momentum           | gossip                  |
| ngm        | neighbourhood mean  | the wrapped optimizer (local)   | gossip + cross round    |
| sam-dsgd   | SAM                 | the wrapped optimizer (local)   | gossip                  |
| q-saddle   | SAM                 | quasi-global momentum           | gossip                  |
| n-saddle   | SAM + neighbourhood | the wrapped optimizer (local)   | gossip + cross round    |
| allreduce  | ∇F, exact average   | the wrapped optimizer           | all-reduce (DDP)        |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    """The ingredients of one decentralized algorithm.

    Attributes:
        name: the ``algorithm=`` string.
        sam: the gradient is sharpness-aware (two passes on the same batch).
        qgm: quasi-global momentum computes the direction (QGM-SGD, or QG-Adam for Adam/AdamW).
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


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("dsgd", sam=False, qgm=False, cross=False, summary="decentralized SGD, local momentum"),
        Algorithm("qgm", sam=False, qgm=True, cross=False, summary="quasi-global momentum"),
        Algorithm("ngm", sam=False, qgm=False, cross=True, summary="neighbourhood gradient mean"),
        Algorithm("sam-dsgd", sam=True, qgm=False, cross=False, summary="SAM + decentralized SGD"),
        Algorithm("q-saddle", sam=True, qgm=True, cross=False, summary="SAM + quasi-global momentum"),
        Algorithm("n-saddle", sam=True, qgm=False, cross=True, summary="SAM + neighbourhood gradient mean"),
        Algorithm("allreduce", sam=False, qgm=False, cross=False, gossip=False, summary="exact all-reduce"),
    )
}

__all__ = ["ALGORITHMS", "Algorithm"]
