"""One decentralized step as a sequence of named phases, and what happens when one of them raises.

    begin      remember x; post the rounds that overlap the passes (AWC gossip, NGM model exchange)
    gradient   the closure's passes: SAM, the cross-gradient round, the exact average
    direction  the update of x: the wrapped optimizer, QGM-SGD or QG-Adam
    commit     complete the gossip round (ATC: post it now), update the QGM buffers

Each algorithm is a list of phases (its row in ``algorithms.py``; the protocol is in ``phases.py``);
the sequencer below only calls them in order. If anything raises, :func:`abort` puts x back to its
value at ``begin`` (bit for bit), lets every phase complete or post the rounds its neighbours expect from this
step (so that no neighbour hangs and the round tags stay aligned), and the exception propagates
unchanged (a failure during the clean-up is attached to it as a note). docs/errors.md has the contract.
"""

from __future__ import annotations

import torch

from saddle_torch.optim.phases import Closure, SaddleRuntime, StepRun


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


__all__ = ["abort", "begin", "finish", "gradient", "restore_x"]
