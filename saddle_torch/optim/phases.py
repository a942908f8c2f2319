"""The phase protocol, the options of a wrapped optimizer and its runtime: the bottom of ``optim/``.

Every other module of ``optim/`` imports from here and nothing here imports them. An algorithm is a
list of :class:`Phase` classes (its row in ``algorithms.py``); the sequencer (``step.py``) calls their
hooks in order. A phase that needs another asks the runtime for it by type, ``rt.phase(Sam)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from saddle_torch.compression import Compression, check_gamma
from saddle_torch.flat import BufferKey, FlatParameters
from saddle_torch.gossip import GossipContext, GossipHandle
from saddle_torch.optim.replay import Closure, MicroBatches

P = TypeVar("P", bound="Phase")
ORDERS = ("atc", "awc")


@dataclass(frozen=True)
class StepOptions:
    """The options of one wrapped optimizer (see :func:`saddle_torch.DistributedOptimizer`).

    Validated once, here for the options every step uses (``order``, ``gamma``) and by each phase's
    :meth:`Phase.check` for its own; an option the algorithm does not use is ignored.
    ``compression`` is resolved (``Compression.none``: exact).
    """

    algorithm: str = "q-saddle"  # the ``algorithm=`` name (for messages)
    rho: float = 0.05
    adaptive: bool = False
    gamma: float | str = "auto"
    order: str = "atc"
    beta: float = 0.9
    nesterov: bool = True
    mu: float = 0.9  # QGM buffer averaging μ (``qgm_mu``, default ``beta``)
    cross_sam: bool = True
    bn_second_pass: bool = False
    compression: Compression = field(default_factory=lambda: Compression.none)  # type: ignore[attr-defined]
    qg_adam: str = "normalized"
    qg_adam_lr: str = "adam"  # QG-Adam's first step: "adam" (AdamW's) or "qgm" (the QGM code's, 10 × larger)
    max_staleness: float | None = None  # None: synchronous gossip; else asynchronous push-sum

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be 'atc' or 'awc', got {self.order!r}")
        object.__setattr__(self, "gamma", check_gamma(self.gamma))
        if self.max_staleness is not None and (
            isinstance(self.max_staleness, bool) or not self.max_staleness >= 0
        ):
            raise ValueError(f"max_staleness must be None or ≥ 0 (steps), got {self.max_staleness!r}")


@dataclass
class StepRun:
    """What one step in progress shares between its phases."""

    model_step: int  # topology step of this step's model round
    handles: dict[BufferKey, GossipHandle] = field(default_factory=dict)  # AWC rounds in flight
    models: dict[BufferKey, list[torch.Tensor]] = field(default_factory=dict)  # neighbours' models (NGM)
    phase: str = "begin"


class Phase:
    """A piece of an algorithm; every hook is optional. ``rt`` is the optimizer's runtime.

    Class attributes say what the phase needs of the wrapper; classmethods validate options and
    build the phase (a slot such as QGM builds the concrete phase for the wrapped optimizer).
    """

    #: re-evaluates the loss inside ``step()``: the step needs a closure
    needs_closure: ClassVar[bool] = False
    #: works with ``first_step()``/``second_step()`` (a loop without a closure)
    split_step: ClassVar[bool] = True
    #: its state belongs to the topology (per-link copies, errors): it starts afresh after a change of
    #: graph, and a process joining an elastic job does not take it from its donor
    topology_bound: ClassVar[bool] = False

    @classmethod
    def check(cls, options: StepOptions, optimizer: torch.optim.Optimizer) -> None:
        """Refuse options (or an optimizer) this phase cannot run with: ``ValueError`` naming them."""

    @classmethod
    def build(cls, rt: SaddleRuntime) -> Phase:
        """The phase for ``rt`` (its buffers allocated)."""
        return cls(rt)  # type: ignore[call-arg]

    def __init__(self, rt: SaddleRuntime) -> None:
        """Allocate what the phase keeps between steps."""

    def prime(self, rt: SaddleRuntime) -> None:
        """Set-up at construction (collective): register gossip names, start state every rank shares."""

    def begin(self, rt: SaddleRuntime, run: StepRun) -> None:
        """Start of the step (x is the pre-step model)."""

    def gradient(self, rt: SaddleRuntime, run: StepRun, closure: Closure | None) -> None:
        """After the first pass: refine the gradient in the grad buffers."""

    def direction(self, rt: SaddleRuntime, run: StepRun) -> None:
        """Update x from the gradient (exactly one phase of an algorithm does this)."""

    def commit(self, rt: SaddleRuntime, run: StepRun) -> None:
        """After the direction: complete communication and update the algorithm's buffers."""

    def abort(self, rt: SaddleRuntime, run: StepRun) -> None:
        """The step failed: complete or post this phase's rounds of the step; x is restored after."""

    def settle(self, rt: SaddleRuntime, *, average: bool = False) -> None:
        """Deliver the communication still in flight between steps (collective; asynchronous gossip).

        ``average``: then replace every rank's model by the exact average that gossip kept.
        """

    def first_half(self, rt: SaddleRuntime) -> None:
        """``first_step()``: after the first backward, before the caller's second pass (SAM: x += e)."""

    def second_half(self, rt: SaddleRuntime) -> None:
        """``second_step()``: after the caller's second backward, before the direction (SAM: x −= e)."""

    def state_dict(self, rt: SaddleRuntime) -> dict[str, Any]:
        """Buffers to checkpoint."""
        return {}

    def load_state_dict(self, rt: SaddleRuntime, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


@dataclass
class SaddleRuntime:
    """Everything the wrapper keeps besides the wrapped optimizer's own state."""

    options: StepOptions
    ctx: GossipContext
    model: nn.Module | None
    flat: FlatParameters
    base: type  # the wrapped optimizer's class
    recipe: tuple[type[Phase], ...] = ()  # the algorithm's phase classes (its row in algorithms.py)
    optimizer: Any = None  # the wrapped optimizer object (the dynamic subclass instance)
    prefix: str = ""  # distinguishes the gossip names of several optimizers in one job
    step: int = 0  # completed steps
    x_prev: dict[BufferKey, torch.Tensor] = field(default_factory=dict)  # x at the start of the step
    phases: list[Phase] = field(default_factory=list)
    bn_layers: list[nn.Module] = field(default_factory=list)  # every BatchNorm with running stats
    bn_frozen: list[nn.Module] = field(default_factory=list)  # those SAM's second pass must not update
    bn: Any = None  # BatchNorm statistics taken by first_step(), restored by second_step()
    run: StepRun | None = None  # the step in progress
    source: Any = None  # weakref to the optimizer that was wrapped (LR schedulers may hold it)
    # Frameworks that call step() without a closure (the Hugging Face Trainer) record each
    # micro-batch here; step() then evaluates the loss again through them (saddle_torch.hf).
    replay: MicroBatches | None = None

    @property
    def algorithm(self) -> str:
        """The ``algorithm=`` name."""
        return self.options.algorithm

    def phase(self, kind: type[P]) -> P | None:
        """The phase of type ``kind`` (or a subclass) in this algorithm, ``None`` if it has none."""
        for p in self.phases:
            if isinstance(p, kind):
                return p
        return None

    @property
    def needs_closure(self) -> bool:
        """Whether ``step()`` must re-evaluate the loss (SAM passes, cross-gradients)."""
        return any(p.needs_closure for p in self.phases)

    @property
    def split_step(self) -> bool:
        """Whether ``first_step()``/``second_step()`` can run this algorithm (it has a pass to split)."""
        return self.needs_closure and all(p.split_step for p in self.phases)

    @property
    def direction(self) -> Phase:
        """The phase that updates x: ``LocalStep``, ``QgmSgd`` (``.m_hat``), ``QgAdam`` (``.m1``/``.m2``)."""
        return next(p for p in self.phases if type(p).direction is not Phase.direction)

    @property
    def gamma(self) -> float:
        """The gossip step γ this optimizer's rounds use (``gamma="auto"`` as resolved at set-up)."""
        return self.ctx.gamma(self.options.gamma, self.options.compression)

    def name(self, key: BufferKey) -> str:
        """Gossip name of one flat buffer, the same on every rank."""
        return self.prefix + key.name()

    def mark_stepped(self) -> None:
        """Tell LR schedulers a step happened (they check ``_opt_called`` on the object they hold)."""
        self.optimizer._opt_called = True
        src = self.source() if self.source is not None else None
        if src is not None:
            src._opt_called = True


def evaluate(rt: SaddleRuntime, closure: Closure) -> Any:
    """One pass of the closure with gradients enabled; gradients land in the flat grad buffers."""
    with torch.enable_grad():
        loss = closure()
    rt.flat.attach_grads()
    return loss


__all__ = ["ORDERS", "Closure", "Phase", "SaddleRuntime", "StepOptions", "StepRun", "evaluate"]
