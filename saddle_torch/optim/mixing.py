"""How the ranks' models meet: a gossip round per step (AWC or ATC), or an exact gradient average."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from typing_extensions import override

from saddle_torch.compression import Compression
from saddle_torch.errors import SaddleWarning
from saddle_torch.gossip.pushsum import PushSum
from saddle_torch.optim.phases import Closure, Phase, SaddleRuntime, StepOptions, StepRun


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

    @classmethod
    @override
    def check(cls, options: StepOptions, optimizer: torch.optim.Optimizer) -> None:
        if options.max_staleness is not None:
            PushSumGossip.check(options, optimizer)

    @classmethod
    @override
    def build(cls, rt: SaddleRuntime) -> Phase:
        """Synchronous rounds, or asynchronous push-sum when ``max_staleness`` is set."""
        return cls(rt) if rt.options.max_staleness is None else PushSumGossip(rt)

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
            if handle.error is None:  # one that raised in commit is over; complete the others
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


class PushSumGossip(Phase):
    """``max_staleness=k``: asynchronous push-sum gossip, mixing with whatever has arrived.

    A rank never waits for a neighbour's message unless the newest one is more than ``k`` of its own
    steps old (:mod:`saddle_torch.gossip.pushsum`); the average of the models is kept exactly (mass is
    only ever moved, never lost), and :meth:`settle` (``opt.drain()``) delivers what is in flight.
    The mixing happens after the local step, whatever ``order``. Exact models only (a codec's CHOCO
    state needs synchronous rounds).
    """

    topology_bound = True  # push-sum weights and messages in flight belong to the group and graph

    @classmethod
    @override
    def check(cls, options: StepOptions, optimizer: torch.optim.Optimizer) -> None:
        if not options.compression.is_none:
            raise ValueError(
                f"asynchronous gossip (max_staleness={options.max_staleness}) sends exact models; "
                f"compression={options.compression!r} needs synchronous rounds (max_staleness=None)"
            )

    def __init__(self, rt: SaddleRuntime) -> None:
        self._sums: dict = {}
        self._mailbox: object | None = None  # the context's mailbox the push-sums are on

    def _ensure(self, rt: SaddleRuntime) -> None:
        """Push-sum state on the context's current group (afresh after an elastic membership change)."""
        ctx = rt.ctx
        mailbox = ctx.mailbox()
        if mailbox is self._mailbox:
            return
        self._mailbox = mailbox
        topo = ctx.topology
        me, period = ctx.rank, range(topo.period)
        ins = sorted({j for s in period for j in topo.in_neighbors(me, s)} - {me})
        outs = sorted({j for s in period for j in topo.out_neighbors(me, s)} - {me})
        limit = rt.options.max_staleness
        bound = None if limit is None or limit == float("inf") else int(limit)
        self._sums = {
            key: PushSum(mailbox, ins, outs, x.numel(), x.dtype, bound) for key, x in rt.flat.buffers.items()
        }

    @override
    def prime(self, rt: SaddleRuntime) -> None:
        for key, x in rt.flat.buffers.items():  # the same shapes on every rank
            rt.ctx.register(rt.name(key), x, Compression.none)  # type: ignore[attr-defined]
        self._ensure(rt)

    @override
    def commit(self, rt: SaddleRuntime, run: StepRun) -> None:
        self._ensure(rt)
        ctx = rt.ctx
        for key, x in rt.flat.buffers.items():
            name = rt.name(key)
            step = ctx.step_of(name)
            self._sums[key].mix(
                x.view(-1), [j for j in ctx.topology.out_neighbors(ctx.rank, step) if j != ctx.rank]
            )
            ctx.set_step(name, step + 1)

    @override
    def settle(self, rt: SaddleRuntime, *, average: bool = False) -> None:
        self._ensure(rt)
        for key, x in rt.flat.buffers.items():
            self._sums[key].drain(x.view(-1))
        if average:  # every rank's model becomes Σx / Σw, the average push-sum kept, with w = 1
            for key, x in rt.flat.buffers.items():
                ps = self._sums[key]
                total = torch.cat([ps.x, ps.x.new_tensor([ps.w])])
                rt.ctx.door.all_reduce(total, what="the push-sum average after draining")
                ps.reset(x.view(-1).copy_(total[:-1] / total[-1]), 1.0)
            return  # the all-reduce waited for every rank
        # Nobody leaves before every rank drained: a rank's closing message may still be on the wire
        # (delivered to the kernel, not yet read) when the sender's process would exit and reset it.
        rt.ctx.door.agree([0], what="waiting for every rank to drain its push-sum messages")

    @override
    def state_dict(self, rt: SaddleRuntime) -> dict[str, Any]:
        if not all(ps.drained for ps in self._sums.values()):
            warnings.warn(
                "saving asynchronous gossip state with messages in flight: their mass is not in the "
                "checkpoint, so a resumed run's average differs; call opt.drain() on every rank first",
                SaddleWarning,
                stacklevel=3,
            )
        return {"pushsum_w": {k.name(): ps.w for k, ps in self._sums.items()}}

    @override
    def load_state_dict(self, rt: SaddleRuntime, state: dict[str, Any]) -> None:
        self._ensure(rt)
        by_name = {k.name(): k for k in self._sums}
        for name, w in state["pushsum_w"].items():
            if name not in by_name:
                raise ValueError(f"checkpoint push-sum weight of {name} does not fit this model")
            key = by_name[name]
            self._sums[key].reset(rt.flat.buffers[key].view(-1), float(w))  # the model loaded first


__all__ = ["ExactAverage", "Gossip", "PushSumGossip"]
