"""NGM's neighbourhood gradient mean (Aketi et al.): the model round and the cross-gradient round.

Rank i holds each in-neighbour's model x_j (from the AWC gossip round, or an exchange at ``begin``
under ATC), computes g_ji = ∇F_i(x_j) on its own batch — with SAM for N-SADDLe's ``cross_sam`` —
sends it back to j, and replaces its gradient by ĝ_i = w_ii g_ii + Σ_{j∈out(i)} w_ji g_ij.

A rank whose step fails still takes part in the cross round, sending NaN in place of its
cross-gradients; a receiver leaves such a neighbour out of its mean and renormalises the weights.
With compression, the models are the neighbours' public CHOCO copies and the cross-gradients travel
compressed with error feedback per link (``ngm_compressed.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from typing_extensions import override

from saddle_torch import kernels
from saddle_torch.flat import BufferKey
from saddle_torch.optim.mixing import Gossip
from saddle_torch.optim.ngm_compressed import LinkCodec, NeighbourChoco, check_compression
from saddle_torch.optim.phases import Closure, Phase, SaddleRuntime, StepOptions, StepRun, evaluate
from saddle_torch.optim.sam import Sam, frozen_batchnorm


def exchange_models(rt: SaddleRuntime, run: StepRun) -> None:
    """ATC: receive the in-neighbours' current models into ``run.models`` without mixing them."""
    ctx, rank = rt.ctx, rt.ctx.rank
    ins = ctx.topology.in_neighbors(rank, run.model_step)
    outs = ctx.topology.out_neighbors(rank, run.model_step)
    rounds = []
    for key, x in rt.flat.buffers.items():
        send = x.detach().to("cpu", copy=True)
        run.models[key] = [torch.empty_like(send) for _ in ins]
        rounds.append(
            (
                send,
                ctx.engine.exchange([(j, send) for j in outs], list(zip(ins, run.models[key], strict=True))),
            )
        )
    for _, r in rounds:
        ctx.engine.finish(r)


def received_models(rt: SaddleRuntime, run: StepRun) -> dict[BufferKey, list[torch.Tensor]]:
    """The in-neighbours' models of this step (AWC: the gossip round's received buffers)."""
    if run.handles:
        return {key: rt.ctx.engine.received(h.round) for key, h in run.handles.items()}
    return run.models


class NeighbourModels(Phase):
    """The model slot of ``ngm``/``n-saddle``: gossip that keeps each in-neighbour's model.

    Exact: :class:`~saddle_torch.optim.mixing.Gossip` keeping the received models. Compressed:
    :class:`~saddle_torch.optim.ngm_compressed.NeighbourChoco` (a public copy of each neighbour's model).
    """

    @classmethod
    @override
    def check(cls, options: StepOptions, optimizer: torch.optim.Optimizer) -> None:
        comp = options.compression
        if options.max_staleness is not None:
            raise ValueError(
                f"{options.algorithm!r} exchanges models and cross-gradients in step with its neighbours; "
                "asynchronous gossip (max_staleness) works with 'q-saddle', 'qgm', 'dsgd' and 'sam-dsgd'"
            )
        if comp.is_lowrank:
            raise ValueError(
                f"{options.algorithm!r} computes cross-gradients at each neighbour's model, which low-rank "
                "gossip never sends (it exchanges projections of model differences); use a codec such as "
                "'int8' or 'fp16' with it, or low-rank gossip with 'q-saddle', 'qgm', 'dsgd' or 'sam-dsgd'"
            )
        if not comp.is_none:
            check_compression(comp, [p.dtype for g in optimizer.param_groups for p in g["params"]])

    @classmethod
    @override
    def build(cls, rt: SaddleRuntime) -> Phase:
        if rt.options.compression.is_none:
            return Gossip(rt, keep_received=True)
        return NeighbourChoco(rt)


class CrossGradients(Phase):
    """The NGM gradient: cross-gradients on the neighbours' models, one exchange, the weighted mean.

    With SAM in the algorithm and ``cross_sam`` (default), each cross term is sharpness-aware too.
    With compression the models are the neighbours' public copies (``NeighbourChoco``) and the
    cross-gradients travel compressed with error feedback per link (``LinkCodec``).
    """

    needs_closure = True
    split_step = False
    topology_bound = True  # compressed: the per-link error feedback of the cross-gradients

    def __init__(self, rt: SaddleRuntime) -> None:
        comp = rt.options.compression
        self.link = None if comp.is_none else LinkCodec(comp)  # the compressed cross-gradient round
        self._exchanged = False
        # The cross-gradients received in the last step, {neighbour: {buffer: g_ij}} (for inspection).
        self.received: dict[int, dict[BufferKey, torch.Tensor]] = {}

    @override
    def begin(self, rt: SaddleRuntime, run: StepRun) -> None:
        self._exchanged = False
        if rt.options.order == "atc" and self.link is None:
            exchange_models(rt, run)

    def _exchange(
        self, rt: SaddleRuntime, run: StepRun, sends: dict[int, dict[BufferKey, torch.Tensor]] | None
    ) -> dict[int, dict[BufferKey, torch.Tensor]]:
        """Send ``sends[j]`` to each in-neighbour j, receive g_ij from each out-neighbour.

        ``sends=None``: this step failed; NaN goes out instead (the receivers leave this rank out).
        """
        self._exchanged = True
        if self.link is not None:
            return self.link.exchange(rt, run, sends)
        topo, rank = rt.ctx.topology, rt.ctx.rank
        outs = topo.out_neighbors(rank, run.model_step)
        ins = topo.in_neighbors(rank, run.model_step)
        grads = rt.flat.grad_buffers
        if sends is None:
            nan = {k: torch.full(g.shape, math.nan, dtype=g.dtype) for k, g in grads.items()}
            sends = {j: nan for j in ins}
        received = {j: {k: torch.empty(g.shape, dtype=g.dtype) for k, g in grads.items()} for j in outs}
        rounds = [
            rt.ctx.engine.exchange([(j, sends[j][key]) for j in ins], [(j, received[j][key]) for j in outs])
            for key in grads
        ]
        for r in rounds:
            rt.ctx.engine.finish(r)
        return received

    @override
    def gradient(self, rt: SaddleRuntime, run: StepRun, closure: Closure | None) -> None:
        assert closure is not None  # the wrapper refuses cross-gradients without a closure
        ins = rt.ctx.topology.in_neighbors(rt.ctx.rank, run.model_step)
        choco = rt.phase(NeighbourChoco)
        models = received_models(rt, run) if choco is None else choco.models(rt, run)
        sam = rt.phase(Sam) if rt.options.cross_sam else None
        g_self = {k: g.detach().clone() for k, g in rt.flat.grad_buffers.items()}
        cross: dict[int, dict[BufferKey, torch.Tensor]] = {}
        with frozen_batchnorm(rt.bn_layers):
            for idx, j in enumerate(ins):
                with torch.no_grad():
                    for key, x in rt.flat.buffers.items():
                        x.copy_(models[key][idx])
                evaluate(rt, closure)
                if sam is not None:
                    sam.gradient(rt, run, closure)
                cross[j] = {k: g.detach().to("cpu", copy=True) for k, g in rt.flat.grad_buffers.items()}
        with torch.no_grad():
            for key, x in rt.flat.buffers.items():
                x.copy_(rt.x_prev[key])
        self.received = self._exchange(rt, run, cross)
        self._combine(rt, run, g_self)

    @override
    def state_dict(self, rt: SaddleRuntime) -> dict[str, Any]:
        return self.link.state_dict() if self.link is not None else {}

    @override
    def load_state_dict(self, rt: SaddleRuntime, state: dict[str, Any]) -> None:
        if self.link is not None:
            self.link.load_state_dict(rt, state)

    def _combine(self, rt: SaddleRuntime, run: StepRun, g_self: dict[BufferKey, torch.Tensor]) -> None:
        topo, rank = rt.ctx.topology, rt.ctx.rank
        valid = [
            j
            for j, grads in self.received.items()
            if not any(math.isnan(float(g[0])) for g in grads.values())
        ]
        w_self = topo.weights(rank, run.model_step)[rank]
        w_cols = [topo.weights(j, run.model_step)[rank] for j in valid]
        total = w_self + sum(w_cols)  # < 1 only when a neighbour's step failed (NaN sentinel)
        with torch.no_grad():
            for key, g in rt.flat.grad_buffers.items():
                g.copy_(g_self[key])
                kernels.weighted_sum_(
                    g,
                    w_self / total,
                    [self.received[j][key].to(g.device) for j in valid],
                    [w / total for w in w_cols],
                )

    @override
    def abort(self, rt: SaddleRuntime, run: StepRun) -> None:
        if self._exchanged:
            return
        choco = rt.phase(NeighbourChoco)
        if choco is not None:
            choco.models(rt, run)  # complete the model round first, as a healthy step does
        self._exchange(rt, run, None)


__all__ = ["CrossGradients", "NeighbourModels", "exchange_models", "received_models"]
