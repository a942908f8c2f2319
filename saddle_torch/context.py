"""The gossip context: process group, topology and engine of one training job.

``saddle_torch.init()`` creates the default context (as ``torch.distributed`` keeps its default
group); everything else receives the context explicitly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from saddle_torch import _ops
from saddle_torch.compression import Compression, ResidualMonitor
from saddle_torch.compression import resolve as resolve_compression
from saddle_torch.errors import MismatchError, peer_failures
from saddle_torch.topology import Topology

_SIGNATURE_LEN = 11  # crc(name), numel, dtype code, ndim, up to 6 dims, crc(codec)


def _signature(name: str, tensor: torch.Tensor, codec: Compression | None = None) -> list[int]:
    shape = list(tensor.shape)[:6]
    dims = shape + [-1] * (6 - len(shape))
    return [
        zlib.crc32(name.encode()),
        tensor.numel(),
        _DTYPES.index(tensor.dtype),
        tensor.dim(),
        *dims,
        zlib.crc32(repr(codec).encode()),
    ]


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _describe(sig: list[int]) -> str:
    ndim = sig[3]
    shape = tuple(sig[4 : 4 + min(ndim, 6)])
    return f"shape {shape} {_DTYPES[sig[2]]}".replace("torch.", "")


@dataclass
class GossipHandle:
    """An in-flight :func:`neighbor_average_async` round; ``wait()`` completes it."""

    context: GossipContext
    round: object
    result: torch.Tensor
    staged: torch.Tensor  # CPU tensor the engine works on (the result itself when on CPU)
    snapshot: torch.Tensor | None = None  # staged copy before mixing, for snapshot rounds of staged tensors
    monitor: tuple[ResidualMonitor, torch.Tensor, torch.Tensor] | None = None  # compressed: (monitor, x, x̂)
    _done: bool = field(default=False)

    def wait(self) -> torch.Tensor:
        """Complete the round and return the averaged tensor.

        Raises:
            PeerError: a neighbour died or stalled past the timeout.
        """
        if not self._done:
            self.context.engine.finish(self.round)
            if self.monitor is not None:
                monitor, x, x_hat = self.monitor
                monitor.observe(x, x_hat)
            if self.snapshot is not None:  # the caller moved result since start: add the mixing delta
                self.result.add_((self.staged - self.snapshot).to(self.result.device))
            elif self.staged is not self.result:
                self.result.copy_(self.staged, non_blocking=False)
            self._done = True
        return self.result

    def done(self) -> bool:
        """Whether every message of the round has arrived (``wait()`` will not block on the network)."""
        return self._done or self.round.done()


class GossipContext:
    """Owns the Gloo group, the current topology and the C++ gossip engine.

    Args:
        group: a process group with a CPU (Gloo) backend.
        topology: the initial topology (its size must equal the group's).
        timeout: how long a gossip round waits for a neighbour before raising ``PeerError``.
        compression: default compression of gossip rounds (``None``: exact).
    """

    def __init__(
        self,
        group: dist.ProcessGroup,
        topology: Topology,
        timeout: timedelta,
        compression: Compression | str | None = None,
    ) -> None:
        self.group = group
        self.timeout = timeout
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        backend = group._get_backend(torch.device("cpu"))
        self._check_topology_agreement(topology)
        self.topology = topology
        self._digest = self.topology_digest(topology)  # keys the "auto" γ cache without per-round work
        self.engine = _ops.GossipEngine(backend, topology._native, timeout.total_seconds())
        self.compression = resolve_compression(compression)
        self.choco = _ops.ChocoStore()  # CHOCO's (x̂, s) per gossip name: reset by set_topology
        self._gammas: dict[tuple[int, str], float] = {}  # "auto" γ per (topology digest, codec)
        self._residuals: dict[str, ResidualMonitor] = {}
        self._registered: dict[str, list[int]] = {}
        self._steps: dict[str, int] = {}
        self._prefixes: dict[str, int] = {}
        self.elastic: Any = None  # ElasticRuntime under init(elastic=True): survives dead peers

    def rebind(self, group: dist.ProcessGroup, topology: Topology) -> None:
        """Move onto a new group (elastic training, after a membership change; collective).

        A new engine on ``group`` with ``topology``; CHOCO state, residual monitors, gossip handshakes
        and round counters start afresh, on every member alike. The old engine must be closed.
        """
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self._check_topology_agreement(topology)
        self.topology = topology
        self._digest = self.topology_digest(topology)
        backend = group._get_backend(torch.device("cpu"))
        self.engine = _ops.GossipEngine(backend, topology._native, self.timeout.total_seconds())
        self.choco.clear()
        self._residuals.clear()
        self._registered.clear()
        self._steps.clear()

    # -- topology -------------------------------------------------------------------------------
    def set_topology(self, topology: Topology) -> None:
        """Switch every rank to ``topology`` (collective: every rank must call it).

        Compressed gossip starts afresh: CHOCO's s = Σ_j w_ij x̂_j belongs to the old W, so every
        name's (x̂, s) is dropped and re-created at its next round (from the common tensor when the
        ranks hold one, else from 0), on every rank alike.
        """
        if topology.size != self.size:
            raise ValueError(
                f"topology {topology.name} has {topology.size} ranks but the world has {self.size}"
            )
        self._check_topology_agreement(topology)
        self.engine.set_topology(topology._native)
        self.topology = topology
        self._digest = self.topology_digest(topology)
        self.choco.clear()
        self._residuals.clear()

    @staticmethod
    def topology_digest(topology: Topology) -> int:
        """CRC of the mixing matrices of ``topology`` over one period."""
        digest = 0
        for step in range(topology.period):
            digest = zlib.crc32(topology.mixing_matrix(step).contiguous().numpy().tobytes(), digest)
        return digest

    def resolve_gamma(self, gamma: float | str, compression: Compression | None) -> float:
        """γ for a round: ``gamma`` itself, or for ``"auto"`` 1 (exact) or the tuned γ of the codec.

        The tuned value is computed once per (topology, codec) by rank 0 and broadcast, so every rank
        uses the same γ; the first ``"auto"`` round of a (topology, codec) is therefore collective.
        """
        if gamma != "auto":
            return float(gamma)
        if compression is None:
            return 1.0
        key = (self._digest, repr(compression))
        value = self._gammas.get(key)
        if value is None:
            from saddle_torch.compression import tune_gamma

            mine = torch.tensor([tune_gamma(self.topology, compression) if self.rank == 0 else 0.0])
            with peer_failures("broadcasting the tuned gamma", self.rank):
                dist.broadcast(mine, 0, group=self.group)
            value = self._gammas[key] = float(mine)
        return value

    def _check_topology_agreement(self, topology: Topology) -> None:
        mine = torch.tensor([self.topology_digest(topology), topology.period], dtype=torch.int64)
        every = [torch.empty_like(mine) for _ in range(self.size)]
        with peer_failures("checking that every rank has the same topology", self.rank):
            dist.all_gather(every, mine, group=self.group)
        differ = [r for r, t in enumerate(every) if not torch.equal(t, every[0])]
        if differ:
            raise ValueError(
                f"ranks disagree on the topology: ranks {differ} differ from rank 0 "
                f"(this rank has {topology.name}); pass the same topology on every rank"
            )

    # -- handshake ------------------------------------------------------------------------------
    def register(self, name: str, tensor: torch.Tensor, codec: Compression | None = None) -> None:
        """Check, once per name, that every rank gossips the same shape, dtype and compression.

        ``codec`` is the round's compression (``None``: exact gossip).

        Collective on first use of ``name``. Raises ``MismatchError`` (a ``ValueError``) on every rank,
        naming the ranks that differ.
        """
        if tensor.dtype not in _DTYPES:
            raise ValueError(f"gossip averages float32/float64/float16/bfloat16 tensors, got {tensor.dtype}")
        sig = _signature(name, tensor, codec)
        known = self._registered.get(name)
        if known is not None:
            if known != sig:
                raise MismatchError(
                    f"gossip tensor {name!r} was registered with {_describe(known)} and is now "
                    f"{_describe(sig)}"
                    + (" with another compression" if known[-1] != sig[-1] else "")
                    + "; use a different name for a different tensor or codec"
                )
            return
        mine = torch.tensor(sig, dtype=torch.int64)
        every = [torch.empty_like(mine) for _ in range(self.size)]
        with peer_failures(f"checking the shape of gossip name {name!r} on every rank", self.rank):
            dist.all_gather(every, mine, group=self.group)
        groups: dict[tuple[int, ...], list[int]] = {}
        for r, t in enumerate(every):
            groups.setdefault(tuple(t.tolist()), []).append(r)
        if len(groups) > 1:
            parts = "; ".join(
                f"rank(s) {ranks} have {_describe(list(s))}"
                + ("" if s[0] == sig[0] else " under another name")
                + ("" if s[-1] == sig[-1] else " with another compression")
                for s, ranks in groups.items()
            )
            raise MismatchError(
                f"ranks registered different tensors for gossip {name!r} (this rank: compression "
                f"{codec if codec is not None else 'none'}): {parts}; pass the same tensors and the same "
                "compression= on every rank"
            )
        self._registered[name] = sig

    # -- gossip ---------------------------------------------------------------------------------
    def start(
        self,
        tensor: torch.Tensor,
        name: str,
        gamma: float | str,
        inplace: bool,
        snapshot: bool,
        compression: Compression | str | None = None,
        *,
        keep_received: bool = False,
        scatter: list[torch.Tensor] | None = None,
        completion: object | None = None,
    ) -> GossipHandle:
        """Register (first time), then post one round; see :func:`saddle_torch.neighbor_average_async`.

        ``compression=None`` uses the context's default; ``Compression.none`` forces exact gossip.
        ``gamma="auto"``: see :meth:`resolve_gamma`. ``keep_received``: keep the neighbours' tensors
        for ``engine.received()`` (exact rounds; otherwise they are folded in as they arrive).
        ``scatter``/``completion`` (CPU, in place): the engine's worker finishes the round itself,
        copies the result into ``scatter`` and counts the round on ``completion``
        (``_ops.Completion``); the returned handle must then not be waited.
        """
        comp = self.compression if compression is None else resolve_compression(compression)
        self.register(name, tensor, comp)
        gamma = self.resolve_gamma(gamma, comp)
        on_worker = completion is not None
        if on_worker and not (inplace and tensor.device.type == "cpu" and tensor.is_contiguous()):
            raise ValueError("a round finished by the engine must gossip a contiguous CPU tensor in place")
        if comp is not None:
            return self._start_compressed(tensor, name, gamma, inplace, comp, scatter or [], completion)
        step = self._steps.get(name, 0)
        result = tensor if inplace else tensor.clone()
        if result.device.type == "cpu" and result.is_contiguous():
            staged = result
        else:
            staged = result.detach().to("cpu", copy=True).contiguous()
        # A staged (non-CPU) tensor is its own snapshot; keep a copy to compute the mixing delta.
        staged_snapshot = staged.clone() if snapshot and staged is not result else None
        handle = self.engine.start(
            staged, step, gamma, snapshot and staged is result, keep_received, scatter or [], completion
        )
        self._steps[name] = step + 1
        return GossipHandle(self, handle, result, staged, staged_snapshot, _done=on_worker)

    def _start_compressed(
        self,
        tensor: torch.Tensor,
        name: str,
        gamma: float,
        inplace: bool,
        comp: Compression,
        scatter: list[torch.Tensor],
        completion: object | None,
    ) -> GossipHandle:
        if tensor.dtype != torch.float32:
            raise ValueError(f"compressed gossip works on float32 tensors, got {tensor.dtype} for {name!r}")
        step = self._steps.get(name, 0)
        result = tensor if inplace else tensor.clone()
        on_cpu = result.device.type == "cpu" and result.is_contiguous()
        staged = result if on_cpu else result.detach().to("cpu", copy=True).contiguous()
        flat = staged.view(-1)
        key = self.choco_key(name, step)
        if not self.choco.has(key):  # first round of this phase since creation or set_topology (collective)
            self.prime_choco(key, flat)
        x_hat, s = self.choco.get_or_zeros(key, flat.numel())
        snapshot = None if on_cpu else staged.clone()  # staged copies get the CHOCO delta added back
        handle = self.engine.start_compressed(
            flat,
            x_hat,
            s,
            step,
            gamma,
            comp.native,
            comp.error_feedback,
            _ops.name_hash(name),
            scatter,
            completion,
        )
        self._steps[name] = step + 1
        if completion is not None:  # finished by the engine's worker: no residual check on this thread
            return GossipHandle(self, handle, result, staged, None, _done=True)
        monitor = self._residuals.get(name)
        if monitor is None:
            monitor = self._residuals[name] = ResidualMonitor(name, gamma, comp)
        return GossipHandle(self, handle, result, staged, snapshot, monitor=(monitor, flat, x_hat))

    def choco_key(self, name: str, step: int) -> str:
        """Key of the CHOCO state (x̂, s) that round ``step`` of ``name`` uses.

        A static topology has one state per name. A time-varying one (``one_peer_exponential``) has
        one per phase, ``name@phase<k>``: CHOCO needs x̂_i to be the same on every rank that holds a
        copy, and in phase k only the phase's neighbours receive i's message, so each phase keeps
        its own public copies (k = step mod period; memory: period × 2 copies of the tensor).
        Each phase's W is doubly stochastic, so each phase's update keeps the average.
        """
        period = self.topology.period
        return name if period == 1 else f"{name}@phase{step % period}"

    def choco_keys(self, name: str) -> list[str]:
        """Every CHOCO state key of ``name`` under the current topology (one per phase)."""
        return [self.choco_key(name, k) for k in range(self.topology.period)]

    def prime_choco(self, name: str, tensor: torch.Tensor) -> bool:
        """Start CHOCO's public copies of ``name`` at ``tensor`` if every rank holds the same one.

        Collective. Every rank's stored x̂_j must equal neighbour j's own x̂_j. Zeros always satisfy
        that; the tensor itself does when it is equal on every rank (a model after
        ``broadcast_parameters``), which an all-gather of a CRC of its bytes checks. Starting from
        x̂ = s = x₀ skips the rounds CHOCO would spend moving its public copies from 0 to the model:
        the first messages are C(x − x₀) instead of C(x). (s = Σ_j w_ij x̂_j = x₀: W's rows sum to 1.)

        Returns:
            whether the state was created; nothing changes when the ranks differ, when ``name``
            already has state, or for tensors other than float32.
        """
        if self.choco.has(name) or tensor.dtype != torch.float32:
            return False
        data = tensor.detach().to("cpu").contiguous().view(-1)
        if not self.same_on_every_rank(data, name):
            return False
        self.choco.set(name, data, data)
        return True

    def same_on_every_rank(self, tensor: torch.Tensor, name: str) -> bool:
        """Whether every rank holds exactly the same ``tensor`` (collective: an all-gather of its CRC)."""
        data = tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8)
        mine = torch.tensor([zlib.crc32(data.numpy()), data.numel()], dtype=torch.int64)
        every = [torch.empty_like(mine) for _ in range(self.size)]
        with peer_failures(f"checking that every rank starts {name!r} from the same tensor", self.rank):
            dist.all_gather(every, mine, group=self.group)
        return all(torch.equal(t, mine) for t in every)

    def step_of(self, name: str) -> int:
        """Number of rounds done so far under ``name`` (selects the phase of a time-varying topology)."""
        return self._steps.get(name, 0)

    def new_prefix(self, kind: str) -> str:
        """A fresh name prefix (``opt0/``, ``opt1/``, ...), equal on ranks that create objects in order."""
        n = self._prefixes.get(kind, 0)
        self._prefixes[kind] = n + 1
        return f"{kind}{n}/"

    def set_step(self, name: str, step: int) -> None:
        """Set the round counter of ``name`` (restoring a checkpoint of a time-varying topology)."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        self._steps[name] = step

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
        self.engine.close()


_current: GossipContext | None = None


def current() -> GossipContext:
    """The context created by :func:`saddle_torch.init`.

    Raises:
        RuntimeError: ``init()`` was not called.
    """
    if _current is None:
        raise RuntimeError("saddle_torch is not initialised: call saddle_torch.init() first")
    return _current


def set_current(ctx: GossipContext | None) -> None:
    """Install ``ctx`` as the default context (used by :func:`saddle_torch.init`)."""
    global _current
    _current = ctx
