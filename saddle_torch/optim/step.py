"""One decentralized step as a sequence of named phases, and what happens when one of them raises.

    begin      remember x; post the rounds that overlap the passes (AWC gossip, NGM model exchange)
    gradient   the closure's passes: SAM, the cross-gradient round, the exact average
    direction  the update of x: the wrapped optimizer, QGM-SGD or QG-Adam
    commit     complete the gossip round (ATC: post it now), update the QGM buffers

Each algorithm is a list of :class:`Phase` objects (``algorithms.py`` says which); the sequencer
below only calls them in order. If anything raises, :func:`abort` puts x back to its value at
``begin`` (bit for bit), lets every phase complete or post the rounds its neighbours expect from this
step (so that no neighbour hangs and the round tags stay aligned), and the exception propagates
unchanged (a failure during the clean-up is attached to it as a note). docs/errors.md has the contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from saddle_torch.flat import BufferKey

if TYPE_CHECKING:
    from saddle_torch.context import GossipHandle
    from saddle_torch.optim.wrapper import SaddleRuntime

Closure = Callable[[], Any]


@dataclass
class StepRun:
    """What one step in progress shares between its phases."""

    model_step: int  # topology step of this step's model round
    handles: dict[BufferKey, GossipHandle] = field(default_factory=dict)  # AWC rounds in flight
    models: dict[BufferKey, list[torch.Tensor]] = field(default_factory=dict)  # neighbours' models (NGM)
    phase: str = "begin"


class Phase:
    """A piece of an algorithm; every hook is optional. ``rt`` is the optimizer's runtime."""

    # Whether the state belongs to the topology (per-link copies, errors): it starts afresh after a
    # change of graph, and a process joining an elastic job does not take it from its donor.
    topology_bound = False

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

    def state_dict(self, rt: SaddleRuntime) -> dict[str, Any]:
        """Buffers to checkpoint."""
        return {}

    def load_state_dict(self, rt: SaddleRuntime, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


def evaluate(rt: SaddleRuntime, closure: Closure) -> Any:
    """One pass of the closure with gradients enabled; gradients land in the flat grad buffers."""
    with torch.enable_grad():
        loss = closure()
    rt.flat.attach_grads()
    return loss


def begin(rt: SaddleRuntime) -> StepRun:
    """Start a step: x is copied to ``rt.x_prev`` before any phase may change it."""
    if rt.run is not None:
        raise RuntimeError(
            "a step is already in progress (first_step() without second_step()); call second_step(), "
            "or cancel_step() to abandon it"
        )
    rt.flat.check()
    for key, x in rt.flat.buffers.items():
        rt.x_prev[key].copy_(x)
    run = StepRun(model_step=rt.ctx.step_of(rt.name(next(iter(rt.flat.buffers)))))
    rt.run = run
    try:
        for p in rt.phases:
            p.begin(rt, run)
    except BaseException as exc:
        abort(rt, exc)
        raise
    return run


def gradient(rt: SaddleRuntime, run: StepRun, closure: Closure | None) -> None:
    """The gradient phases (SAM, cross-gradients, exact average)."""
    run.phase = "gradient"
    for p in rt.phases:
        p.gradient(rt, run, closure)


def finish(rt: SaddleRuntime, run: StepRun) -> None:
    """Direction and commit; the step is complete when this returns."""
    run.phase = "direction"
    for p in rt.phases:
        p.direction(rt, run)
    run.phase = "commit"
    for p in rt.phases:
        p.commit(rt, run)
    rt.step += 1
    rt.run = None


def restore_x(rt: SaddleRuntime) -> None:
    """X ← the model at the start of the step, bit for bit."""
    with torch.no_grad():
        for key, x in rt.flat.buffers.items():
            x.copy_(rt.x_prev[key])


def abort(rt: SaddleRuntime, exc: BaseException | None) -> None:
    """Undo a failed step: x back to its pre-step value, rounds completed, the optimizer idle again.

    Args:
        rt: the optimizer's runtime.
        exc: the exception that stopped the step; clean-up failures are attached to it as notes
            (``None``: raise the first clean-up failure instead, for :meth:`cancel_step`).
    """
    run = rt.run
    rt.run = None
    if run is None:
        return
    if rt.bn is not None:
        rt.bn.restore()
    restore_x(rt)  # the phases below post x itself where a neighbour still expects this step's model
    problems: list[BaseException] = []
    for p in rt.phases:
        try:
            p.abort(rt, run)
        except BaseException as err:  # noqa: BLE001 - every phase gets its chance to clean up
            problems.append(err)
    restore_x(rt)
    if exc is not None:
        for err in problems:
            exc.add_note(f"saddle_torch: while undoing the failed step: {type(err).__name__}: {err}")
    elif problems:
        raise problems[0]


__all__ = ["Closure", "Phase", "StepRun", "abort", "begin", "evaluate", "finish", "gradient", "restore_x"]
