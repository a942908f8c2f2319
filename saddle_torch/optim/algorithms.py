"""The registry of ``algorithm=`` names: each row is the recipe, the phases it runs, in order.

| name      | gradient                    | models meet by      | direction                        |
|-----------|-----------------------------|---------------------|----------------------------------|
| dsgd      | ∇F                          | ``Gossip``          | ``LocalStep`` (local momentum)   |
| qgm       | ∇F                          | ``Gossip``          | ``QuasiGlobalMomentum``          |
| ngm       | ``CrossGradients``          | ``NeighbourModels`` | ``LocalStep``                    |
| sam-dsgd  | ``Sam``                     | ``Gossip``          | ``LocalStep``                    |
| q-saddle  | ``Sam``                     | ``Gossip``          | ``QuasiGlobalMomentum``          |
| n-saddle  | ``Sam``, ``CrossGradients`` | ``NeighbourModels`` | ``LocalStep``                    |
| allreduce | ∇F, ``ExactAverage``        | (identical models)  | ``LocalStep``                    |

ALGORITHMS.md has the math. A new combination of existing phases is one row here; a new ingredient is
one new :class:`~saddle_torch.optim.phases.Phase` (its own file) plus the rows that use it —
:func:`register` adds one from outside the package. The wrapper never asks what an algorithm is: it
validates (:meth:`Algorithm.check`), builds (:meth:`Algorithm.build`) and sequences the phases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saddle_torch.optim.direction import LocalStep
from saddle_torch.optim.mixing import ExactAverage, Gossip
from saddle_torch.optim.ngm import CrossGradients, NeighbourModels
from saddle_torch.optim.phases import Phase, SaddleRuntime, StepOptions
from saddle_torch.optim.qgm import QuasiGlobalMomentum
from saddle_torch.optim.sam import Sam


@dataclass(frozen=True)
class Algorithm:
    """One decentralized algorithm: a name and the phases of its step, in the order they run.

    Attributes:
        name: the ``algorithm=`` string.
        phases: :class:`Phase` classes; each validates its own options and builds itself.
        summary: one line for docs and errors.
    """

    name: str
    phases: tuple[type[Phase], ...]
    summary: str = ""

    @property
    def needs_closure(self) -> bool:
        """Whether ``step()`` must re-evaluate the loss (SAM passes, cross-gradients)."""
        return any(p.needs_closure for p in self.phases)

    def check(self, options: StepOptions, optimizer: torch.optim.Optimizer) -> None:
        """Every phase's :meth:`~Phase.check` (``ValueError`` naming the option at fault)."""
        for p in self.phases:
            p.check(options, optimizer)

    def build(self, rt: SaddleRuntime) -> list[Phase]:
        """The phases for ``rt``, in order."""
        return [p.build(rt) for p in self.phases]


ALGORITHMS: dict[str, Algorithm] = {}


def register(algorithm: Algorithm, *, replace: bool = False) -> Algorithm:
    """Make ``algorithm`` available as ``DistributedOptimizer(..., algorithm=algorithm.name)``.

    Raises:
        ValueError: the name is taken (pass ``replace=True`` to redefine it) or a phase is not a
            :class:`Phase` class.
    """
    if algorithm.name in ALGORITHMS and not replace:
        raise ValueError(f"algorithm {algorithm.name!r} is already registered")
    bad = [p for p in algorithm.phases if not (isinstance(p, type) and issubclass(p, Phase))]
    if bad or not algorithm.phases:
        raise ValueError(f"algorithm {algorithm.name!r}: phases must be Phase classes, got {bad or '()'}")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


for _row in (
    Algorithm("dsgd", (Gossip, LocalStep), "decentralized SGD, local momentum"),
    Algorithm("qgm", (Gossip, QuasiGlobalMomentum), "quasi-global momentum"),
    Algorithm("ngm", (CrossGradients, NeighbourModels, LocalStep), "neighbourhood gradient mean"),
    Algorithm("sam-dsgd", (Sam, Gossip, LocalStep), "SAM + decentralized SGD"),
    Algorithm("q-saddle", (Sam, Gossip, QuasiGlobalMomentum), "SAM + quasi-global momentum"),
    Algorithm(
        "n-saddle", (Sam, CrossGradients, NeighbourModels, LocalStep), "SAM + neighbourhood gradient mean"
    ),
    Algorithm("allreduce", (ExactAverage, LocalStep), "exact all-reduce"),
):
    register(_row)

__all__ = ["ALGORITHMS", "Algorithm", "register"]
