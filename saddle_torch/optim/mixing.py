"""How the ranks' models meet: a gossip round per step (AWC or ATC), or an exact gradient average."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from typing_extensions import override

from saddle_torch.compression import Compression
from saddle_torch.optim.step import Closure, Phase, StepRun

if TYPE_CHECKING:
    from saddle_torch.optim.wrapper import SaddleRuntime


class Gossip(Phase):
    """x ← x + γ Σ_j w_ij (x_j − x) once per step.

    ``awc`` (adapt-while-combine) posts the pre-step model at ``begin`` and mixes it into the updated
    model at ``commit``: x ← x½ + γ Σ_j w_ij (x_j − x_i) (the snapshot form), hiding the round behind
    the passes. ``atc`` (adapt-then-combine) gossips the updated model at ``commit``.
    """

    def __init__(self) -> None:
        self._posted = False  # this step's round was posted (or an attempt was made)

    def _start(self, rt: SaddleRuntime, run: StepRun, snapshot: bool) -> None:
        self._posted = True
        cfg = rt.config
        for key, x in rt.flat.buffers.items():
            run.handles[key] = rt.ctx.start(
                x,
                rt.name(key),
                cfg.gamma,
                inplace=True,
                snapshot=snapshot,
                compression=cfg.compression or Compression.none,  # None: exact, not the context default
                keep_received=cfg.algorithm.cross,  # NGM computes cross-gradients on the received models
            )

    @override
    def begin(self, rt: SaddleRuntime, run: StepRun) -> None:
        self._posted = False
        if rt.config.order == "awc":
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

    def __init__(self) -> None:
        self._reduced = False

    @override
    def begin(self, rt: SaddleRuntime, run: StepRun) -> None:
        self._reduced = False

    def _reduce(self, rt: SaddleRuntime, zero: bool) -> None:
        self._reduced = True
        for g in rt.flat.grad_buffers.values():
            if zero:  # a failed rank adds nothing to the others' average this step
                g.zero_()
            dist.all_reduce(g, group=rt.ctx.group)
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
