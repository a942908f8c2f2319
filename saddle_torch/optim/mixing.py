"""How the ranks' models meet: a gossip round per step (AWC or ATC), or an exact gradient average."""

from __future__ import annotations

import torch
from typing_extensions import override

from saddle_torch.compression import Compression
from saddle_torch.optim.phases import Closure, Phase, SaddleRuntime, StepRun


class Gossip(Phase):
    """x ← x + γ Σ_j w_ij (x_j − x) once per step.

    ``awc`` (adapt-while-combine) posts the pre-step model at ``begin`` and mixes it into the updated
    model at ``commit``: x ← x½ + γ Σ_j w_ij (x_j − x_i) (the snapshot form), hiding the round behind
    the passes. ``atc`` (adapt-then-combine) gossips the updated model at ``commit``. Options:
    ``order``, ``gamma``, ``compression`` (CHOCO error feedback, or low-rank gossip of each parameter
    matrix; the state lives in the context).

    Args:
        rt: the optimizer's runtime.
        keep_received: keep the neighbours' models of each round (NGM computes cross-gradients on them).
    """

    def __init__(self, rt: SaddleRuntime, keep_received: bool = False) -> None:
        self.keep_received = keep_received
        self._posted = False  # this step's round was posted (or an attempt was made)

    @override
    def prime(self, rt: SaddleRuntime) -> None:
        comp = rt.options.compression
        for key, x in rt.flat.buffers.items():
            rt.ctx.register(rt.name(key), x, comp)
            # CHOCO starts at the common model (ATC needs it before the first round); a time-varying
            # topology's phases start at their first round instead, as after set_topology.
            if comp.uses_choco and rt.ctx.choco.period == 1:
                rt.ctx.choco.prime(rt.name(key), x, rt.ctx.door)

    def _start(self, rt: SaddleRuntime, run: StepRun, snapshot: bool) -> None:
        self._posted = True
        opts = rt.options
        for key, x in rt.flat.buffers.items():
            run.handles[key] = rt.ctx.start(
                x,
                rt.name(key),
                gamma=opts.gamma,
                compression=opts.compression,
                inplace=True,
                snapshot=snapshot,
                keep_received=self.keep_received,
                shapes=[p.shape for p in rt.flat.groups[key]],  # low-rank gossip's matrices
            )

    @override
    def begin(self, rt: SaddleRuntime, run: StepRun) -> None:
        self._posted = False
        if rt.options.order == "awc":
            self._start(rt, run, snapshot=True)

    @override
    def commit(self, rt: SaddleRuntime, run: StepRun) -> None:
        if not self._posted:
            self._start(rt, run, snapshot=False)
        for handle in run.handles.values():
            handle.wait()
        run.handles = {}

    @override
    def abort(self, rt: SaddleRuntime, run: StepRun) -> None:
        # Neighbours expect this step's round: post x (restored to its pre-step value) if it was not,
        # then complete every round so its tag is used up on both sides. Mixing into x is undone after.
        if not self._posted:
            self._start(rt, run, snapshot=False)
        handles, run.handles = run.handles, {}
        for handle in handles.values():
            handle.wait()


class ExactAverage(Phase):
    """``allreduce``: the gradient becomes the exact average over all ranks (what DDP computes)."""

    def __init__(self, rt: SaddleRuntime) -> None:
        self._reduced = False

    @override
    def prime(self, rt: SaddleRuntime) -> None:
        for key, x in rt.flat.buffers.items():  # the same shapes on every rank before any all-reduce
            rt.ctx.register(rt.name(key), x, Compression.none)  # type: ignore[attr-defined]

    @override
    def begin(self, rt: SaddleRuntime, run: StepRun) -> None:
        self._reduced = False

    def _reduce(self, rt: SaddleRuntime, zero: bool) -> None:
        self._reduced = True
        for g in rt.flat.grad_buffers.values():
            if zero:  # a failed rank adds nothing to the others' average this step
                g.zero_()
            rt.ctx.door.all_reduce(g, what="the exact gradient average (algorithm='allreduce')")
            g.div_(rt.ctx.size)

    @override
    def gradient(self, rt: SaddleRuntime, run: StepRun, closure: Closure | None) -> None:
        self._reduce(rt, zero=False)

    @override
    def abort(self, rt: SaddleRuntime, run: StepRun) -> None:
        if not self._reduced:
            with torch.no_grad():
                self._reduce(rt, zero=True)


__all__ = ["ExactAverage", "Gossip"]
