"""Compressed NGM / N-SADDLe: per-neighbour CHOCO copies, cross-gradients with per-link feedback.

The engine's CHOCO round keeps only x̂_i and s_i = Σ_j w_ij x̂_j, but cross-gradients are computed at
each in-neighbour's model. Here every rank keeps x̂_i and, for each in-neighbour j, its copy of x̂_j
(deg + 1 copies of the model per phase of the topology). One model round (ALGORITHMS.md, CHOCO):

    q_i = C(x_i − x̂_i) to the out-neighbours; q_j from the in-neighbours
    x̂_i ← x̂_i + q_i,  x̂_j ← x̂_j + q_j
    x_i ← x_i + γ Σ_j w_ij (x̂_j − x̂_i)                 (at commit)

which is the engine's update (s_i − x̂_i = Σ_j w_ij (x̂_j − x̂_i)). Rank i computes the cross-gradient
of neighbour j at x̂_j, the model j is known to hold up to its compression residual. ``awc`` posts the
round of the pre-step model at ``begin`` (it completes before the cross-gradients, overlapping the
first pass); ``atc`` posts the updated model at ``commit`` and its cross-gradients use the public
copies of the previous round.

The cross-gradient round (:class:`LinkCodec`) sends c = C(e_j + g_ji) to j and keeps e_j ← e_j + g_ji
− c, one error e_j per link and buffer; a one-float flag per link says whether the sender's step
failed (its messages are then ignored, as the exact round's NaN sentinel is).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from typing_extensions import override

from saddle_torch import _ops, kernels
from saddle_torch.comm import crc_of
from saddle_torch.compression import Compression
from saddle_torch.flat import BufferKey
from saddle_torch.gossip import ResidualMonitor
from saddle_torch.optim.phases import Phase, SaddleRuntime, StepRun

_SEP = "|"  # checkpoint keys: "<buffer>|<phase>|<rank>" and "<buffer>|<neighbour>"


def check_compression(comp: Compression, flat_dtypes: list[torch.dtype]) -> None:
    """Refuse what compressed cross-gradient algorithms do not support (``ValueError`` naming it)."""
    if not comp.error_feedback:
        raise ValueError(
            "cross-gradient algorithms (ngm, n-saddle) compress with error feedback only; "
            f"compression={comp!r} has error_feedback=False"
        )
    bad = sorted({str(d) for d in flat_dtypes if d != torch.float32})
    if bad:
        raise ValueError(f"compressed gossip works on float32 parameters, this model has {', '.join(bad)}")


def _message(comp: Compression, numel: int) -> torch.Tensor:
    return torch.zeros(comp.encoded_bytes(numel), dtype=torch.uint8)


class NeighbourChoco(Phase):
    """The model round of compressed NGM: CHOCO with a copy x̂_j of every in-neighbour's public model."""

    topology_bound = True  # x̂_j per in-neighbour

    def __init__(self, rt: SaddleRuntime) -> None:
        self.comp = rt.options.compression
        # (buffer, phase) → {rank: x̂_rank} for this rank and the phase's in-neighbours (flat, CPU).
        self.hats: dict[tuple[BufferKey, int], dict[int, torch.Tensor]] = {}
        self._topology: object | None = None  # the topology the copies belong to (set_topology: afresh)
        self._pending: list[tuple[BufferKey, int, int, torch.Tensor, list[torch.Tensor], Any]] = []
        self._posted = False
        self._gamma: float | None = None
        self._monitors: dict[BufferKey, ResidualMonitor] = {}

    # -- state --------------------------------------------------------------------------------------
    @override
    def prime(self, rt: SaddleRuntime) -> None:
        self.start_copies(rt)

    def start_copies(self, rt: SaddleRuntime) -> None:
        """Register the names and create the public copies for the current topology (collective).

        Every copy starts at the model when every rank holds the same one (CRC-checked), else at 0,
        so that x̂_j is the same on every rank that holds a copy of it. Runs at construction, and at
        the first round on a new graph (``set_topology``, an elastic membership change).
        """
        ctx, topo = rt.ctx, rt.ctx.topology
        self.hats = {}
        self._topology = topo
        for key, x in rt.flat.buffers.items():
            ctx.register(rt.name(key), x, self.comp)  # set-up handshake; resolves "auto" γ for the codec
        self._gamma = ctx.gamma(rt.options.gamma, self.comp)
        for key, x in rt.flat.buffers.items():
            flat = x.detach().to("cpu", torch.float32, copy=True).reshape(-1)
            same = ctx.door.same_everywhere(
                [crc_of([flat]), flat.numel()],
                what=f"checking that every rank starts {rt.name(key)!r} from the same tensor",
            )
            start = flat if same else torch.zeros_like(flat)
            for phase in range(topo.period):
                holders = [ctx.rank, *topo.in_neighbors(ctx.rank, phase)]
                self.hats[(key, phase)] = {r: start.clone() for r in holders}

    def _copies(self, rt: SaddleRuntime, key: BufferKey, step: int) -> dict[int, torch.Tensor]:
        topo = rt.ctx.topology
        if self._topology is not topo:  # set_topology since the last round (collective, as it is)
            self.start_copies(rt)
        return self.hats[(key, step % topo.period)]

    def models(self, rt: SaddleRuntime, run: StepRun) -> dict[BufferKey, list[torch.Tensor]]:
        """The in-neighbours' public models x̂_j, in in-neighbour order, shaped like the buffers."""
        self._complete(rt)
        ins = rt.ctx.topology.in_neighbors(rt.ctx.rank, run.model_step)
        out = {}
        for key, x in rt.flat.buffers.items():
            copies = self._copies(rt, key, run.model_step)
            out[key] = [copies[j].view(x.shape) for j in ins]
        return out

    # -- the round ------------------------------------------------------------------------------------
    def _post(self, rt: SaddleRuntime, run: StepRun) -> None:
        self._posted = True
        ctx, rank, step = rt.ctx, rt.ctx.rank, run.model_step
        ins, outs = ctx.topology.in_neighbors(rank, step), ctx.topology.out_neighbors(rank, step)
        codec = self.comp.native
        for key, x in rt.flat.buffers.items():
            name = rt.name(key)
            copies = self._copies(rt, key, step)
            delta = x.detach().to("cpu", torch.float32, copy=True).reshape(-1).sub_(copies[rank])
            msg = kernels.codec_encode(codec, delta, _ops.message_seed(_ops.name_hash(name), step, rank))
            recvs = [_message(self.comp, delta.numel()) for _ in ins]
            handle = ctx.engine.exchange([(j, msg) for j in outs], list(zip(ins, recvs, strict=True)))
            self._pending.append((key, step, rank, msg, recvs, handle))
            ctx.set_step(name, step + 1)

    def _complete(self, rt: SaddleRuntime) -> None:
        """Wait for the posted round and add every decoded message to its public copy."""
        pending, self._pending = self._pending, []
        for _, _, _, _, _, handle in pending:
            rt.ctx.engine.finish(handle)
        codec = self.comp.native
        for key, step, rank, msg, recvs, _ in pending:
            name_hash = _ops.name_hash(rt.name(key))
            copies = self._copies(rt, key, step)
            ins = rt.ctx.topology.in_neighbors(rank, step)
            kernels.codec_decode_add(codec, msg, _ops.message_seed(name_hash, step, rank), 1.0, copies[rank])
            for j, m in zip(ins, recvs, strict=True):
                kernels.codec_decode_add(codec, m, _ops.message_seed(name_hash, step, j), 1.0, copies[j])

    def _mix(self, rt: SaddleRuntime, run: StepRun) -> None:
        """Mix: x ← x + γ Σ_j w_ij (x̂_j − x̂_i)."""
        ctx, rank, step = rt.ctx, rt.ctx.rank, run.model_step
        self._copies(rt, next(iter(rt.flat.buffers)), step)  # re-primed (and γ re-tuned) after set_topology
        gamma = self._gamma
        assert gamma is not None  # set by start_copies()
        weights = ctx.topology.weights(rank, step)
        ins = ctx.topology.in_neighbors(rank, step)
        for key, x in rt.flat.buffers.items():
            copies = self._copies(rt, key, step)
            delta = torch.zeros_like(copies[rank])
            kernels.weighted_sum_(
                delta, 0.0, [copies[j] - copies[rank] for j in ins], [gamma * weights[j] for j in ins]
            )
            with torch.no_grad():
                x.add_(delta.view(x.shape).to(x.device, x.dtype))
            monitor = self._monitors.get(key)
            if monitor is None:
                monitor = self._monitors[key] = ResidualMonitor(rt.name(key), gamma, self.comp)
            monitor.observe(x.detach().to("cpu").reshape(-1), copies[rank])

    # -- phases ---------------------------------------------------------------------------------------
    @override
    def begin(self, rt: SaddleRuntime, run: StepRun) -> None:
        self._posted = False
        if rt.options.order == "awc":
            self._post(rt, run)

    @override
    def commit(self, rt: SaddleRuntime, run: StepRun) -> None:
        if not self._posted:
            self._post(rt, run)
        self._complete(rt)
        self._mix(rt, run)

    @override
    def abort(self, rt: SaddleRuntime, run: StepRun) -> None:
        # The neighbours expect this step's round and add its message to their copy of x̂_i: post x
        # (already restored) if it was not, and complete it here too so every copy stays equal.
        if not self._posted:
            self._post(rt, run)
        self._complete(rt)

    @override
    def state_dict(self, rt: SaddleRuntime) -> dict[str, Any]:
        return {
            "neighbour_choco": {
                _SEP.join((key.name(), str(phase), str(r))): t.clone()
                for (key, phase), copies in self.hats.items()
                for r, t in copies.items()
            }
        }

    @override
    def load_state_dict(self, rt: SaddleRuntime, state: dict[str, Any]) -> None:
        saved = state["neighbour_choco"]
        if self._topology is not rt.ctx.topology:
            self.start_copies(rt)
        mine = {
            _SEP.join((key.name(), str(phase), str(r))): t
            for (key, phase), copies in self.hats.items()
            for r, t in copies.items()
        }
        if set(saved) != set(mine):
            raise ValueError(
                "checkpoint's per-neighbour CHOCO copies do not fit this topology and model "
                f"(saved {sorted(saved)[:4]}..., expected {sorted(mine)[:4]}...)"
            )
        for name, t in mine.items():
            if saved[name].shape != t.shape:
                raise ValueError(f"checkpoint CHOCO copy {name} {tuple(saved[name].shape)} does not fit")
            t.copy_(saved[name])


class LinkCodec:
    """The cross-gradient round of compressed NGM: c = C(e_j + g), e_j ← e_j + g − c, per link."""

    def __init__(self, comp: Compression) -> None:
        self.comp = comp
        self.errors: dict[tuple[BufferKey, int], torch.Tensor] = {}  # (buffer, in-neighbour) → e_j
        self._pending_errors: dict[tuple[BufferKey, int], torch.Tensor] = {}
        self._topology: object | None = None  # the graph the errors belong to (a new one: afresh)

    def exchange(
        self, rt: SaddleRuntime, run: StepRun, sends: dict[int, dict[BufferKey, torch.Tensor]] | None
    ) -> dict[int, dict[BufferKey, torch.Tensor]]:
        """Send each in-neighbour its compressed cross-gradients (``None``: this step failed).

        Returns the decoded cross-gradients of every out-neighbour, NaN where its step failed.
        """
        ctx, rank, step = rt.ctx, rt.ctx.rank, run.model_step
        if self._topology is not ctx.topology:  # set_topology or an elastic membership change
            if self._topology is not None:
                self.errors.clear()  # owed to links that are gone or now lead elsewhere
            self._topology = ctx.topology
        ins, outs = ctx.topology.in_neighbors(rank, step), ctx.topology.out_neighbors(rank, step)
        grads, codec = rt.flat.grad_buffers, self.comp.native
        flag = torch.tensor([1.0 if sends is not None else math.nan], dtype=torch.float32)
        flags = {j: torch.zeros(1, dtype=torch.float32) for j in outs}
        rounds = [ctx.engine.exchange([(j, flag) for j in ins], list(flags.items()))]
        messages: dict[BufferKey, dict[int, torch.Tensor]] = {}
        for key, g in grads.items():
            seed = _ops.message_seed(_ops.name_hash(rt.name(key) + "/cross"), step, rank)
            out = []
            for j in ins:
                if sends is None:
                    out.append((j, _message(self.comp, g.numel())))
                    continue
                e = self.errors.setdefault((key, j), torch.zeros(g.numel(), dtype=torch.float32))
                v = e + sends[j][key].reshape(-1).to(torch.float32)
                msg = kernels.codec_encode(codec, v, seed)
                kernels.codec_decode_add(codec, msg, seed, -1.0, v)  # v − C(v): what is still owed to j
                out.append((j, msg))
                self._pending_errors[(key, j)] = v
            messages[key] = {j: _message(self.comp, g.numel()) for j in outs}
            rounds.append(ctx.engine.exchange(out, list(messages[key].items())))
        for r in rounds:
            ctx.engine.finish(r)
        self.errors.update(self._pending_errors)  # every message went out: the errors move on
        self._pending_errors.clear()
        received: dict[int, dict[BufferKey, torch.Tensor]] = {}
        for j in outs:
            received[j] = {}
            for key, g in grads.items():
                if math.isnan(float(flags[j])):
                    received[j][key] = torch.full(g.shape, math.nan, dtype=g.dtype)
                    continue
                seed = _ops.message_seed(_ops.name_hash(rt.name(key) + "/cross"), step, j)
                decoded = kernels.codec_decode(codec, messages[key][j], g.numel(), seed)
                received[j][key] = decoded.view(g.shape).to(g.dtype)
        return received

    def state_dict(self) -> dict[str, Any]:
        """The error of every link and buffer."""
        errors = {_SEP.join((k.name(), str(j))): e.clone() for (k, j), e in self.errors.items()}
        return {"cross_errors": errors}

    def load_state_dict(self, rt: SaddleRuntime, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (links are recreated by name)."""
        by_name = {k.name(): k for k in rt.flat.grad_buffers}
        self.errors = {}
        for name, e in state["cross_errors"].items():
            buffer, _, j = name.rpartition(_SEP)
            key = by_name.get(buffer)
            if key is None or e.numel() != rt.flat.grad_buffers[key].numel():
                raise ValueError(f"checkpoint cross-gradient error {name} does not fit this model")
            self.errors[(key, int(j))] = e.clone()


__all__ = ["LinkCodec", "NeighbourChoco", "check_compression"]
