"""The gossip context: process group, topology and engine of one training job.

``saddle_torch.init()`` creates the default context (as ``torch.distributed`` keeps its default
group, :mod:`saddle_torch.gossip.current`); everything else receives the context explicitly. The
context owns its pieces and changes them together (``set_topology``, an elastic ``rebind``); the jobs
are in their own modules: the collectives in :class:`~saddle_torch.comm.Door`, the names and γ in
:mod:`~saddle_torch.gossip.registry`, CHOCO in :mod:`~saddle_torch.gossip.choco`, posting a round in
:mod:`~saddle_torch.gossip.rounds`.
"""

from __future__ import annotations

import zlib
from datetime import timedelta
from typing import Any, Protocol

import torch

from saddle_torch import _ops
from saddle_torch.comm import Door, gloo_backend
from saddle_torch.compression import Compression, resolve
from saddle_torch.errors import MismatchError
from saddle_torch.gossip import rounds
from saddle_torch.gossip.choco import ChocoState
from saddle_torch.gossip.lowrank import LowRankState
from saddle_torch.gossip.registry import GammaTable, Names
from saddle_torch.gossip.rounds import GossipHandle
from saddle_torch.topology import Topology


class Recovery(Protocol):
    """What the step loops ask of an elastic runtime (``saddle_torch.elastic.ElasticRuntime``)."""

    behind: int
    joining: Any
    history: list[Any]
    last_checkpoint: Any  # (path, step) of this rank's last saddle_torch.save_checkpoint, or None

    def recover(self, exc: BaseException, completed_steps: int) -> Any:
        """Agree on the survivors after ``exc`` and rebuild the context on them (collective)."""

    def grow_due(self, completed_steps: int) -> bool:
        """Whether joiners are admitted before this step."""

    def grow(self, completed_steps: int) -> Any:
        """Admit the planned joiners (collective)."""

    def attach(self, runtime: Any) -> None:
        """The job's optimizer runtime (its state for joiners)."""

    def close(self) -> None:
        """Leave the job."""


def topology_digest(topology: Topology) -> int:
    """CRC of the mixing matrices of ``topology`` over one period."""
    digest = 0
    for step in range(topology.period):
        digest = zlib.crc32(topology.mixing_matrix(step).contiguous().numpy().tobytes(), digest)
    return digest


class GossipContext:
    """Owns the Gloo group (through its door), the current topology and the C++ gossip engine.

    Args:
        group: a process group with a CPU (Gloo) backend.
        topology: the initial topology (its size must equal the group's).
        timeout: how long a gossip round waits for a neighbour before raising ``PeerError``.
        compression: the default codec of gossip rounds (``None``: exact); ``compression=None``
            everywhere else means this default.
    """

    def __init__(
        self,
        group: Any,
        topology: Topology,
        timeout: timedelta,
        compression: Compression | str | None = None,
    ) -> None:
        self.timeout = timeout
        self.compression = resolve(compression)
        self.names = Names()
        self.gammas = GammaTable()
        self.elastic: Recovery | None = None  # under init(elastic=True): survives dead peers
        self._bind(group, topology)

    def _bind(self, group: Any, topology: Topology) -> None:
        old = getattr(self, "_mailbox", None)
        if old is not None:
            old.close()  # aborts what the old group still has in flight
        self._mailbox: Any = None
        self.group = group
        self.door = Door(group)
        self.rank, self.size = self.door.rank, self.door.size
        if topology.size != self.size:
            raise ValueError(
                f"topology {topology.name} has {topology.size} ranks but the world has {self.size}"
            )
        self.digest = self._agree_on(topology)
        self.topology = topology
        self.choco = ChocoState(topology.period)
        self.lowrank: dict[str, LowRankState] = {}  # low-rank gossip's factors per name (per edge inside)
        self.engine = _ops.GossipEngine(gloo_backend(group), topology._native, self.timeout.total_seconds())

    def rebind(self, group: Any, topology: Topology) -> None:
        """Move onto a new group (elastic training, after a membership change; collective).

        A new door and engine on ``group`` with ``topology``; CHOCO state, residual monitors, gossip
        handshakes, round counters and the tuned γ of ``gamma="auto"`` start afresh, on every member
        alike. The old engine must be closed.
        """
        self.names.forget()
        # γ="auto" is resolved by a collective the first time a (topology, codec) is met, which each
        # rank decides from its own table: a joiner's table is empty where the members' is not (ring(8)
        # again after a kill and a restart), so only the joiner would enter the broadcast and every
        # round of the grown group would time out, membership change after membership change. Every
        # member starts the new group with an empty table, so all resolve the same codecs again.
        self.gammas = GammaTable()
        self._bind(group, topology)

    # -- topology -------------------------------------------------------------------------------
    def set_topology(self, topology: Topology) -> None:
        """Switch every rank to ``topology`` (collective: every rank must call it).

        Compressed gossip starts afresh: CHOCO's s = Σ_j w_ij x̂_j belongs to the old W, so every
        name's (x̂, s) is dropped and re-created at its next round (from the common tensor when the
        ranks hold one, else from 0), on every rank alike; so are low-rank gossip's factors (they
        belong to edges); ``gamma="auto"`` is resolved again for every codec in use.
        """
        if topology.size != self.size:
            raise ValueError(
                f"topology {topology.name} has {topology.size} ranks but the world has {self.size}"
            )
        digest = self._agree_on(topology)
        self.engine.set_topology(topology._native)
        self.topology, self.digest = topology, digest
        self.choco.reset(topology.period)
        self.lowrank.clear()  # factors belong to the old graph's edges
        for codec in self.names.codecs():
            self.gammas.resolve(codec, topology, digest, self.door)

    def _agree_on(self, topology: Topology) -> int:
        """The topology's digest, once every rank is known to hold the same topology (collective)."""
        digest = topology_digest(topology)
        every = self.door.agree(
            [digest, topology.period], what="checking that every rank has the same topology"
        )
        differ = [r for r, t in enumerate(every) if t != every[0]]
        if differ:
            raise MismatchError(
                f"ranks disagree on the topology: ranks {differ} differ from rank 0 "
                f"(this rank has {topology.name}); pass the same topology on every rank"
            )
        return digest

    def mailbox(self) -> Any:
        """The point-to-point mailbox of asynchronous gossip on this group (created at first use)."""
        if self._mailbox is None:
            self._mailbox = _ops.Mailbox(gloo_backend(self.group), self.timeout.total_seconds())
        return self._mailbox

    # -- names and γ ------------------------------------------------------------------------------
    def register(self, name: str, tensor: torch.Tensor, codec: Compression) -> None:
        """The set-up handshake of ``name`` (collective on its first use) and its codec's γ.

        Raises ``MismatchError`` (a ``ValueError``) on every rank when ranks differ, naming them.
        """
        if self.names.register(name, tensor, codec, self.door):
            self.gammas.resolve(codec, self.topology, self.digest, self.door)

    def gamma(self, gamma: float | str, codec: Compression) -> float:
        """The γ of a round of ``codec`` under the option ``gamma`` (``"auto"`` resolved at set-up)."""
        return self.gammas.value(gamma, codec, self.digest)

    def resolve_gamma(self, gamma: float | str, codec: Compression) -> float:
        """Set-up: resolve ``gamma`` for ``codec`` on the current topology (collective for a new codec)."""
        if gamma == "auto":
            self.gammas.resolve(codec, self.topology, self.digest, self.door)
        return self.gamma(gamma, codec)

    def step_of(self, name: str) -> int:
        """Number of rounds done so far under ``name``."""
        return self.names.step_of(name)

    def set_step(self, name: str, step: int) -> None:
        """Set the round counter of ``name`` (restoring a checkpoint of a time-varying topology)."""
        self.names.set_step(name, step)

    def new_prefix(self, kind: str) -> str:
        """A fresh name prefix (``opt0/``, ``opt1/``, ...), equal on ranks that create objects in order."""
        return self.names.new_prefix(kind)

    # -- gossip ---------------------------------------------------------------------------------
    def start(
        self,
        tensor: torch.Tensor,
        name: str,
        *,
        gamma: float | str,
        compression: Compression,
        inplace: bool,
        snapshot: bool = False,
        keep_received: bool = False,
        scatter: list[torch.Tensor] | None = None,
        completion: object | None = None,
        shapes: list[torch.Size] | None = None,
    ) -> GossipHandle:
        """Register ``name`` (first time, collective), then post one round of it.

        Args:
            tensor: the tensor to average with the neighbours.
            name: identifies it across ranks.
            gamma: the option, validated by the caller (``"auto"`` or a number in (0, 1]).
            compression: the round's codec, resolved (``Compression.none``: exact).
            inplace: average ``tensor`` itself instead of a copy.
            snapshot: mix the tensor as it was now; ``wait()`` adds the delta (the caller may change it).
            keep_received: keep the neighbours' tensors for ``engine.received()`` (exact rounds).
            scatter: CPU tensors the engine's worker copies the result into (with ``completion``).
            completion: an ``_ops.Completion``: the engine's worker finishes the round and counts it
                there; the returned handle must then not be waited.
            shapes: low-rank gossip: the shapes of the tensors ``tensor`` is the concatenation of
                (its matrices are compressed; default: ``tensor``'s own shape).
        """
        self.register(name, tensor, compression)
        return rounds.start(
            self,
            tensor,
            name,
            gamma=self.gamma(gamma, compression),
            compression=compression,
            inplace=inplace,
            snapshot=snapshot,
            keep_received=keep_received,
            scatter=scatter,
            completion=completion,
            shapes=shapes,
        )

    def stats(self) -> dict[str, float]:
        """Engine counters.

        Keys: ``bytes_sent``, ``bytes_received``, ``rounds``, ``wait_seconds`` (callers blocked in
        ``wait()``), ``transfer_seconds`` (posting to last message, summed over rounds).
        """
        return dict(self.engine.stats())

    def close(self) -> None:
        """Stop the engine and release the process group (idempotent); later rounds raise."""
        if self.elastic is not None:
            self.elastic.close()
        if self._mailbox is not None:
            self._mailbox.close()
        self.engine.close()


__all__ = ["GossipContext", "GossipHandle", "Recovery", "topology_digest"]
