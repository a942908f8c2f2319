"""Low-rank gossip (PowerGossip; Vogels, Karimireddy, Jaggi, NeurIPS 2020), per edge.

Each edge {i, j} of a round's graph compresses the *difference* of its two ends' models, so what a
rank sends depends on the neighbour. For every parameter matrix X (a parameter reshaped to rows ×
rest; 1-D and small tensors, where a rank-r factor saves nothing, gossip exactly), both ends hold the
same factors P (rows × r) and Q (rest × r), initialised from a seed of the unordered pair and the
matrix, warm-started across rounds. One power-iteration half step per exchange, alternating on each
edge (ALGORITHMS.md, "Low-rank gossip"):

- even: P̂ = orth(P); send a = XᵀP̂; receive the neighbour's; Q = a_hi − a_lo = (X_hi − X_lo)ᵀP̂;
  D = P̂ Qᵀ (the projection of X_hi − X_lo onto span(P̂));
- odd: Q̂ = orth(Q); send b = XQ̂; receive; P = b_hi − b_lo = (X_hi − X_lo)Q̂; D = P Q̂ᵀ.

Then X_lo += γ ŵ_ij D and X_hi −= γ ŵ_ij D: both ends compute the same D, so the update is
antisymmetric and the average of the models is preserved exactly, with no error feedback. The exact
part moves by γ ŵ_ij (x_j − x_i). ŵ is the symmetrised weight (w_ij + w_ji)/2 of the round's graph:
on a directed graph (``one_peer_exponential``) a rank exchanges with its in- and its out-neighbour.
Factors live per edge and survive the period of a time-varying graph; they start afresh on a new
graph (``set_topology``, an elastic membership change).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from saddle_torch.topology import Topology


@dataclass(frozen=True)
class Layout:
    """Where the matrices and the exact part of a flat tensor are.

    Attributes:
        matrices: ``(offset, rows, cols)`` of each matrix gossiped in low rank.
        exact: ``(offset, numel)`` of each piece gossiped exactly.
        numel: elements of the flat tensor.
    """

    matrices: tuple[tuple[int, int, int], ...]
    exact: tuple[tuple[int, int], ...]
    numel: int

    @staticmethod
    def of(shapes: list[torch.Size] | list[tuple[int, ...]], rank: int) -> Layout:
        """The layout of tensors of ``shapes`` stored one after the other (a flat parameter buffer)."""
        matrices, exact, offset = [], [], 0
        for shape in shapes:
            n = 1
            for d in shape:
                n *= int(d)
            rows = int(shape[0]) if len(shape) >= 2 else 0
            cols = n // rows if rows else 0
            if rows and rank * (rows + cols) < rows * cols:
                matrices.append((offset, rows, cols))
            elif n:
                exact.append((offset, n))
            offset += n
        return Layout(tuple(matrices), tuple(exact), offset)

    @property
    def exact_numel(self) -> int:
        """Elements gossiped exactly."""
        return sum(n for _, n in self.exact)

    def message_numel(self, rank: int, parity: int) -> int:
        """Elements of one edge's message in a half step of ``parity`` (0: XᵀP, 1: XQ)."""
        return (
            sum((cols if parity == 0 else rows) * rank for _, rows, cols in self.matrices) + self.exact_numel
        )


def edges(topology: Topology, rank: int, step: int) -> list[tuple[int, float]]:
    """This rank's partners in round ``step`` and their symmetrised weights ŵ = (w_ij + w_ji)/2."""
    out: dict[int, float] = {}
    mine = topology.weights(rank, step)
    for j in set(topology.in_neighbors(rank, step)) | set(topology.out_neighbors(rank, step)):
        if j != rank:
            out[j] = 0.5 * (mine.get(j, 0.0) + topology.weights(j, step).get(rank, 0.0))
    return sorted(out.items())


def _orthonormal(v: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning ``v`` (rank 1: v/‖v‖), the same on both ends of an edge."""
    if v.shape[1] == 1:
        norm = torch.linalg.vector_norm(v)
        return v / norm if float(norm) > 0 else v
    return torch.linalg.qr(v, mode="reduced").Q


@dataclass
class EdgeFactors:
    """The factors of one edge: per matrix (P, Q), and how many half steps it took."""

    p: list[torch.Tensor]
    q: list[torch.Tensor]
    half_steps: int = 0


@dataclass
class LowRankState:
    """The low-rank gossip state of one gossip name: the factors of every edge this rank is on."""

    layout: Layout
    rank: int
    seed: int
    edges: dict[tuple[int, int], EdgeFactors] = field(default_factory=dict)

    def factors(self, lo: int, hi: int, like: torch.Tensor) -> EdgeFactors:
        """The factors of edge (lo, hi), dtype and device of ``like``, seeded by the pair at first use."""
        found = self.edges.get((lo, hi))
        if found is None:
            g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{lo}:{hi}".encode()))
            ps = [
                torch.randn(rows, self.rank, generator=g, dtype=torch.float64).to(like.device, like.dtype)
                for _, rows, _ in self.layout.matrices
            ]
            qs = [like.new_zeros(cols, self.rank) for _, _, cols in self.layout.matrices]
            found = self.edges[(lo, hi)] = EdgeFactors(ps, qs)
        elif found.p and found.p[0].device != like.device:  # loaded from a checkpoint on the CPU
            found.p = [t.to(like.device) for t in found.p]
            found.q = [t.to(like.device) for t in found.q]
        return found

    def state_dict(self) -> dict[str, Any]:
        """The factors (copies), for a checkpoint."""
        return {
            f"{lo}-{hi}": {
                "p": [t.clone() for t in f.p],
                "q": [t.clone() for t in f.q],
                "half_steps": f.half_steps,
            }
            for (lo, hi), f in self.edges.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: the saved factors do not fit this layout.
        """
        edges = {}
        for key, saved in state.items():
            lo, hi = (int(v) for v in key.split("-"))
            shapes = [(rows, self.rank) for _, rows, _ in self.layout.matrices]
            if [tuple(t.shape) for t in saved["p"]] != shapes:
                raise ValueError(f"checkpoint low-rank factors of edge {key} do not fit this model")
            edges[(lo, hi)] = EdgeFactors(
                [t.clone() for t in saved["p"]], [t.clone() for t in saved["q"]], int(saved["half_steps"])
            )
        self.edges = edges


def state_for(
    states: dict[str, LowRankState], name: str, shapes: list[torch.Size], rank: int, seed: int
) -> LowRankState:
    """The low-rank state of gossip name ``name`` in ``states``, created empty (no edge yet) if new.

    Raises:
        ValueError: an existing state was made for other shapes or another rank.
    """
    layout = Layout.of(shapes, rank)
    state = states.get(name)
    if state is None:
        state = states[name] = LowRankState(layout, rank, seed)
    elif state.layout != layout or state.rank != rank:
        raise ValueError(f"low-rank gossip {name!r} was started with other matrices or another rank")
    return state


class HalfStep:
    """One posted half step of one rank on all its edges: its messages out, the neighbours' in.

    The messages are made of the tensor as it is when the half step is posted (AWC: the pre-step
    model); :meth:`apply` adds ±γŵD to the tensor as it is then (the snapshot form). Each matrix is read
    once for all edges of a parity (one matmul with their factors side by side) and updated once
    (one ``addmm`` with inner dimension r × edges): no model-sized temporary.
    """

    def __init__(
        self, state: LowRankState, me: int, x: torch.Tensor, partners: list[tuple[int, float]]
    ) -> None:
        self.state, self.me, self.partners = state, me, partners
        layout, r = state.layout, state.rank
        flat = x.detach().reshape(-1)
        self.factors = [state.factors(min(me, j), max(me, j), flat) for j, _ in partners]
        self.parity = [f.half_steps % 2 for f in self.factors]
        # own[k][m]: this rank's projection of matrix m for partner k (XᵀP̂ or XQ̂)
        own: list[list[torch.Tensor]] = [[] for _ in partners]
        for m, (offset, rows, cols) in enumerate(layout.matrices):
            xm = flat[offset : offset + rows * cols].view(rows, cols)
            for parity in (0, 1):
                ks = [k for k, p in enumerate(self.parity) if p == parity]
                if not ks:
                    continue
                for k in ks:  # the same orthonormalisation on both ends of each edge
                    f = self.factors[k]
                    if parity == 0:
                        f.p[m] = _orthonormal(f.p[m])
                    else:
                        f.q[m] = _orthonormal(f.q[m])
                basis = torch.cat(
                    [self.factors[k].p[m] if parity == 0 else self.factors[k].q[m] for k in ks], 1
                )
                projected = xm.t() @ basis if parity == 0 else xm @ basis  # (cols or rows) × r·|ks|
                for i, k in enumerate(ks):
                    own[k].append(projected[:, i * r : (i + 1) * r])
        self.own = own
        self.exact = [flat[offset : offset + n].clone() for offset, n in layout.exact]
        self.sends: list[tuple[int, torch.Tensor]] = []
        self.recvs: list[tuple[int, torch.Tensor]] = []
        for k, (j, _) in enumerate(partners):
            parts = [t.reshape(-1) for t in own[k]] + self.exact
            msg = torch.cat(parts) if parts else flat.new_zeros(0)
            self.sends.append((j, msg.to("cpu").contiguous()))  # Gloo carries CPU tensors
            self.recvs.append((j, torch.empty(layout.message_numel(r, self.parity[k]), dtype=flat.dtype)))

    def apply(self, x: torch.Tensor, gamma: float) -> None:
        """Add Σ over edges of ±γŵD (exact part: γŵ(x_j − x_i)) to ``x``, once every message arrived."""
        layout, r = self.state.layout, self.state.rank
        flat = x.detach().reshape(-1)
        pos = [0] * len(self.partners)
        with torch.no_grad():
            for m, (offset, rows, cols) in enumerate(layout.matrices):
                left, right = [], []
                for k, (j, w) in enumerate(self.partners):
                    f, parity, msg = self.factors[k], self.parity[k], self.recvs[k][1].to(flat.device)
                    length = (cols if parity == 0 else rows) * r
                    theirs = msg[pos[k] : pos[k] + length].view(-1, r)
                    pos[k] += length
                    lo = self.me < j
                    diff = theirs - self.own[k][m] if lo else self.own[k][m] - theirs  # hi − lo, on both ends
                    c = gamma * w if lo else -gamma * w
                    if parity == 0:  # D = P̂ (hi − lo)ᵀP̂ ... = P̂ Qᵀ
                        f.q[m] = diff
                        left.append(f.p[m] * c)
                        right.append(diff)
                    else:  # D = (hi − lo)Q̂ Q̂ᵀ = P Q̂ᵀ
                        f.p[m] = diff
                        left.append(diff * c)
                        right.append(f.q[m])
                if left:
                    xm = flat[offset : offset + rows * cols].view(rows, cols)
                    xm.addmm_(torch.cat(left, 1), torch.cat(right, 1).t())
            for k, (_, w) in enumerate(self.partners):
                msg = self.recvs[k][1].to(flat.device)
                for (offset, n), mine in zip(layout.exact, self.exact, strict=True):
                    flat[offset : offset + n].add_(msg[pos[k] : pos[k] + n] - mine, alpha=gamma * w)
                    pos[k] += n
                self.factors[k].half_steps += 1


class LowRankRound:
    """One low-rank gossip round of one rank: ``iterations`` half steps, each an exchange on every edge.

    The first half step is posted at once (its messages are made of ``x`` as it is now); ``wait()``
    completes it and applies it to the tensor, then runs the others on the tensor as it is then.
    """

    def __init__(
        self,
        engine: Any,
        state: LowRankState,
        topology: Topology,
        me: int,
        step: int,
        x: torch.Tensor,
        gamma: float,
        iterations: int,
    ) -> None:
        self.engine, self.gamma, self.iterations = engine, gamma, iterations
        self.state, self.me = state, me
        self.partners = edges(topology, me, step)
        self.current = self._post(x)

    def _post(self, x: torch.Tensor) -> tuple[HalfStep, Any]:
        half = HalfStep(self.state, self.me, x, self.partners)
        return half, self.engine.exchange(half.sends, half.recvs)

    def done(self) -> bool:
        """Whether the posted exchange has completed (the rest of ``wait()`` does not wait on the network)."""
        return bool(self.current[1].done()) and self.iterations == 1

    def wait(self, x: torch.Tensor) -> None:
        """Complete every half step, applying each to ``x`` (``PeerError`` if an exchange fails)."""
        for k in range(self.iterations):
            if k:
                self.current = self._post(x)
            half, exchange = self.current
            self.engine.finish(exchange)
            half.apply(x, self.gamma)


__all__ = ["EdgeFactors", "HalfStep", "Layout", "LowRankRound", "LowRankState", "edges", "state_for"]
