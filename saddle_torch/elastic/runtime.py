"""Elastic training: the survivors of a dead or stalled rank carry on without a restart.

``saddle_torch.init(elastic=True)`` under the launcher (``python -m saddle_torch.run``) attaches an
:class:`ElasticRuntime` to the gossip context. When a gossip round fails, ``DistributedOptimizer.step``
calls :meth:`ElasticRuntime.recover`: the survivors agree on the new membership through the
launcher's store (:mod:`saddle_torch.elastic.membership`), build a new Gloo group among themselves
under a fresh store prefix, repair the topology (:func:`saddle_torch.elastic.repair.repair`), start
CHOCO afresh, and the step is taken again. A process started later (``--restarts``, ``--join``) is
admitted the same way at a step boundary (:meth:`ElasticRuntime.grow`) and receives a neighbour's
state (:mod:`saddle_torch.elastic.transfer`). docs/errors.md says what is guaranteed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from saddle_torch.comm import groups
from saddle_torch.elastic import transfer
from saddle_torch.elastic.auth import SECRET_ENV, secret_from_env
from saddle_torch.elastic.board import Board, open_job
from saddle_torch.elastic.membership import (
    POLL_SECONDS,
    Agreement,
    Membership,
    grow_of,
    key,
    parse_ids,
    wait_for_admission,
)
from saddle_torch.elastic.rendezvous import form_group
from saddle_torch.elastic.repair import grow, joined_topology, joined_topology_needs_graph, repair
from saddle_torch.errors import PeerError, StoreLostError
from saddle_torch.gossip import GossipContext
from saddle_torch.topology import Topology

if TYPE_CHECKING:
    from saddle_torch.optim import SaddleRuntime

STORE_ENV = "SADDLE_ELASTIC_STORE"  # host:port of the launcher's store, set by saddle_torch.run
JOIN_ENV = "SADDLE_ELASTIC_JOIN"  # set by the launcher for a process that joins a running job
ID_ENV = "SADDLE_ELASTIC_ID"  # its id (never reused)
REPLACES_ENV = "SADDLE_ELASTIC_REPLACES"  # the dead rank a restarted process replaces (its data shard)
log = logging.getLogger("saddle_torch.elastic")


def connect_store(timeout: timedelta) -> dist.TCPStore:
    """A new client connection to the launcher's store (``SADDLE_ELASTIC_STORE``).

    Raises:
        ValueError: the process was not started by ``python -m saddle_torch.run``.
    """
    addr = os.environ.get(STORE_ENV)
    if not addr:
        raise ValueError(
            "saddle_torch.init(elastic=True) needs the launcher that keeps survivors running: start the "
            "job with `python -m saddle_torch.run --nproc N script.py ...` (torchrun restarts every worker "
            "when one fails)"
        )
    host, _, port = addr.rpartition(":")
    return dist.TCPStore(host, int(port), is_master=False, timeout=timeout, wait_for_workers=False)


def connect_board(timeout: timedelta) -> Board:
    """:func:`connect_store` with the job's signer (the secret in ``SADDLE_SECRET``, set by the launcher).

    Raises:
        ValueError: not started by the launcher, or no secret.
        AuthenticationError: the secret is not the job's.
    """
    store = connect_store(timeout)
    secret = secret_from_env()
    if secret is None:
        raise ValueError(
            f"saddle_torch.init(elastic=True): no job secret in ${SECRET_ENV}; the launcher "
            "(python -m saddle_torch.run) sets it for the processes it starts"
        )
    return open_job(store, secret)


def suspects_of(exc: BaseException, members: list[int]) -> list[int]:
    """Original ranks that ``exc`` blames: the neighbour of a failed round (``PeerError.peer``).

    Nobody is blamed for an aborted round (the membership was already changing) or a failure without
    a neighbour (a collective: the rank that died is reported by the launcher, or suspected by the
    neighbours whose rounds with it failed).
    """
    peer = getattr(exc, "peer", None)
    if getattr(exc, "aborted", False) or peer is None or not 0 <= peer < len(members):
        return []
    return [members[peer]]


class ElasticRuntime:
    """Membership, failure watcher and recovery of one elastic gossip context.

    Args:
        ctx: the context it belongs to.
        board: a client of the launcher's store, with the job's signer.
        spec: the topology as given to ``init()`` (a name is rebuilt for the new size).
        weights: as given to ``init()``.
        join_window: how long a membership change waits for ranks that neither registered nor are
            known to be dead (default: the context's timeout).
        membership: the membership this context starts in (a joiner's; default: every rank of the
            launch, epoch 0).
        joining: a joiner's admission: it receives its state when the optimizer is wrapped.
        changes: membership changes made at launch (ranks that died before the group formed).
    """

    def __init__(
        self,
        ctx: GossipContext,
        board: Board,
        spec: Any,
        weights: str,
        join_window: timedelta,
        membership: Membership | None = None,
        joining: Agreement | None = None,
        changes: list[Agreement] | None = None,
    ) -> None:
        self.ctx = ctx
        self.board = board
        self.spec = spec
        self.weights = weights
        self.membership = membership or Membership(board, ctx.rank, list(range(ctx.size)), join_window)
        self.topology = ctx.topology  # the graph over membership.members
        self.behind = 0  # steps this rank skips to line up with the others after a change
        self.joining = joining  # until the state arrived (DistributedOptimizer construction)
        self.history: list[Agreement] = list(changes or []) if joining is None else [joining]
        replaces = os.environ.get(REPLACES_ENV)
        self.replaces = int(replaces) if replaces else None  # the dead rank a restart stands in for
        self.last_checkpoint: tuple[Any, int | None] | None = None  # set by saddle_torch.save_checkpoint
        self.store_lost: str | None = None  # why the launcher's store is unreachable, once it is
        self.state_bytes_sent = 0  # model and optimizer state sent to joiners (bytes)
        self.state_bytes_received = 0  # ... received from a donor (a joiner)
        self._rt: SaddleRuntime | None = None
        self._grow: tuple[int, int, list[int]] | None = None  # (epoch, step, ids) of a planned growth
        self._known = set(self.membership.members) | {r for a in self.history for r in a.previous}
        self._lock = threading.Lock()  # (membership.epoch, ctx.engine) change together
        self._stop = threading.Event()
        watch = Board(connect_store(ctx.timeout), board.signer)  # the watcher's own connection
        self._watcher = threading.Thread(
            target=self._watch, args=(watch,), name="saddle-elastic", daemon=True
        )
        self._watcher.start()

    @property
    def original_rank(self) -> int:
        """This process's id: its rank at launch, or the fresh id a joining process was given."""
        return self.membership.original_rank

    @property
    def data_rank(self) -> int:
        """The launch rank whose data this process should train on (a restart takes the dead rank's)."""
        return self.original_rank if self.replaces is None else self.replaces

    @property
    def members(self) -> list[int]:
        """Original ranks of the current members, in rank order."""
        return list(self.membership.members)

    def attach(self, rt: SaddleRuntime) -> None:
        """The job's optimizer (its step count, its state for joiners); a joiner receives its state now."""
        self._rt = rt
        admitted = self.joining
        if admitted is None:
            return
        ctx = self.ctx
        donor = transfer.donor_of(ctx.topology, ctx.rank, len(admitted.survivors))
        signer, me = self.board.signer, self.original_rank
        state, size = transfer.recv_state(donor, ctx.door, signer, admitted.epoch, me)
        self.state_bytes_received += size
        transfer.load_state(rt, state, admitted.steps)
        self.joining = None
        log.info(
            "saddle_torch.elastic: process %d joined as rank %d of %d at step %d (epoch %d); model and "
            "optimizer state from rank %d",
            self.original_rank,
            ctx.rank,
            ctx.size,
            admitted.steps,
            admitted.epoch,
            donor,
        )

    def _watch(self, board: Board) -> None:
        """Abort this rank's rounds as soon as anyone marks the current epoch broken; plan growths.

        While this rank's main thread waits in a collective (a set-up handshake, ``broadcast_parameters``,
        the all-reduce of ``algorithm="allreduce"``: no abort reaches those, they end at the group's
        timeout), also mark it busy in a broken epoch, so that the others wait for it (close_list).
        """
        vouched = -1
        while not self._stop.wait(POLL_SECONDS):
            with self._lock:
                epoch, engine, door = self.membership.epoch, self.ctx.engine, self.ctx.door
            try:
                reason = board.first(key(epoch, "broken"))
                broken = reason is not None
                if not broken:
                    self._plan_growth(board, epoch)
            except Exception as err:  # noqa: BLE001 - the store went away
                if not self._stop.is_set():
                    self._lose_store(err)
                return
            if broken and door.blocked and vouched != epoch:
                try:  # alive, maybe blocked in a set-up collective until the timeout: wait for it
                    board.put(key(epoch, "busy", self.original_rank))
                except Exception:  # noqa: BLE001 - the store went away: the job is ending
                    return
                vouched = epoch
            with self._lock:
                if broken and self.membership.epoch == epoch and not engine.broken():
                    engine.abort(f"membership change ({reason})")

    def _plan_growth(self, board: Board, epoch: int) -> None:
        """Processes asked to join: set ``epoch/grow`` to a step no member has reached (first wins)."""
        rt = self._rt
        if rt is None or not board.store.check([key("join")]) or grow_of(board, epoch) is not None:
            return
        known = set(self._known)
        pending = [
            j
            for j in dict.fromkeys(i for entry in board.entries(key("join")) for i in parse_ids(entry))
            if j not in known and not board.has(key("dead", j))
        ]
        if pending:
            # Members are at most the graph's diameter (< size) steps apart; this thread's view of the
            # step may be one behind.
            at = rt.step + self.ctx.size + 2
            board.post(key(epoch, "grow"), f"{at}:{','.join(map(str, pending))}")

    def _lose_store(self, err: BaseException) -> None:
        """The launcher's store is unreachable: say so once; membership is frozen from now on."""
        if self.store_lost is None:
            self.store_lost = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            log.warning(
                "saddle_torch.elastic: rank %d lost the job's store at %s (%s): node 0's launcher, which "
                "hosts it, is gone. Training goes on with the %d current members, but no process can "
                "join or leave: the first failure from now on stops the ranks it reaches (StoreLostError)",
                self.original_rank,
                os.environ.get(STORE_ENV, "?"),
                self.store_lost,
                self.ctx.size,
            )

    def _store_lost_error(self, exc: BaseException, completed_steps: int) -> StoreLostError:
        checkpoint = (
            "No checkpoint was saved on this rank (saddle_torch.save_checkpoint)"
            if self.last_checkpoint is None
            else f"Its last checkpoint is {self.last_checkpoint[0]} (step {self.last_checkpoint[1]})"
        )
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        why = why.removeprefix("saddle_torch: ")
        return StoreLostError(
            f"saddle_torch: the job's store at {os.environ.get(STORE_ENV, '?')} (hosted by node 0's "
            f"launcher) is gone ({self.store_lost}), so the membership cannot change: rank "
            f"{self.original_rank} stops at step {completed_steps} after: {why}. "
            f"{checkpoint}: restart the job from the checkpoints (saddle_torch.load_checkpoint)"
        )

    def grow_due(self, completed_steps: int) -> bool:
        """Whether joiners are admitted before this step (one store lookup per step until one is planned)."""
        e = self.membership.epoch
        if self.store_lost is not None:
            return False
        if self._grow is None or self._grow[0] != e:
            try:
                planned = grow_of(self.board, e)
            except dist.DistError as err:  # node 0's launcher is gone: go on without membership changes
                self._lose_store(err)
                return False
            if planned is None:
                return False
            self._grow = (e, *planned)
        return completed_steps >= self._grow[1]

    def grow(self, completed_steps: int) -> Agreement:
        """Admit the planned joiners (collective among the members and the joiners, at a step boundary)."""
        return self._change(completed_steps, joiners=True)

    def recover(self, exc: BaseException, completed_steps: int) -> Agreement:
        """After ``exc`` (a failed round), agree on the survivors and rebuild the context on them.

        Collective among the survivors. On return the context's group, rank, size, topology and engine
        are those of the new epoch, CHOCO state and gossip handshakes start afresh, and
        :attr:`behind` says how many steps this rank skips to line up with the most advanced survivor.

        Raises:
            FencedError: the others closed the membership without this rank.
            StoreLostError: the launcher's store is gone, so no membership can be agreed.
        """
        if self.store_lost is not None:
            raise self._store_lost_error(exc, completed_steps) from exc
        reason = f"rank {self.original_rank}: {str(exc).splitlines()[0][:300]}"
        try:
            self.membership.report(reason, suspects_of(exc, self.membership.members))
        except dist.DistError as err:
            self._lose_store(err)
            raise self._store_lost_error(exc, completed_steps) from err
        self.ctx.engine.abort(reason)
        return self._change(completed_steps, joiners=False)

    def _change(self, completed_steps: int, joiners: bool) -> Agreement:
        ctx = self.ctx
        while True:
            try:
                agreement = self.membership.agree(completed_steps, joiners)  # FencedError propagates
            except dist.DistError as err:  # the store died during the change
                self._lose_store(err)
                raise self._store_lost_error(err, completed_steps) from err
            self._known |= set(agreement.members) | set(agreement.previous)
            try:
                self._rebuild(agreement)
                self._donate(agreement)
                break
            except (RuntimeError, PeerError) as err:  # a member died while the group formed
                try:
                    self.membership.report(
                        f"rank {self.original_rank}: forming epoch {agreement.epoch} failed: {err}"
                    )
                except dist.DistError as lost:  # ... or the store did
                    self._lose_store(lost)
                    raise self._store_lost_error(err, completed_steps) from err
                joiners = False
        self.behind = agreement.steps - completed_steps
        self.history.append(agreement)
        if ctx.rank == 0:
            what = []
            if agreement.departed:
                what.append(f"rank(s) {agreement.departed} left (their data shards are no longer trained on)")
            if agreement.joined:
                what.append(f"process(es) {agreement.joined} joined")
            (log.warning if agreement.departed else log.info)(
                "saddle_torch.elastic: membership epoch %d at step %d: %s; %d ranks continue on %s",
                agreement.epoch,
                agreement.steps,
                "; ".join(what) or "same members",
                ctx.size,
                ctx.topology.name,
            )
        return agreement

    def _rebuild(self, agreement: Agreement) -> None:
        ctx = self.ctx
        positions = [agreement.previous.index(r) for r in agreement.survivors]
        topo = repair(self.spec, self.topology, positions, self.weights)
        if agreement.joined:
            topo, graph = grow(self.spec, topo, len(agreement.members), self.weights)
            if graph is not None:  # the joiners cannot rebuild it by name
                published = json.dumps({"graph": graph, "name": topo.name})
                self.board.post(key(agreement.epoch, "graph"), published)  # the first entry counts
        self.topology = topo
        with self._lock:
            ctx.engine.abort("membership change")
            ctx.engine.close()  # a broken engine keeps its Gloo group alive: never joins a dead peer
        form_group(self.board, agreement.epoch, agreement.members, self.original_rank, ctx.timeout)
        # Not under the lock: rebind's first collective (the topology's digest) waits for every new
        # member, and when one dies now, only the watcher can mark this rank busy meanwhile (the
        # others would close the next list without it). The epoch changed first, so the watcher
        # never aborts the new engine for the old epoch's break.
        ctx.rebind(groups.world(), topo)

    def _donate(self, agreement: Agreement) -> None:
        """Send every joiner whose donor this rank is the model, optimizer and algorithm state."""
        ctx, survivors = self.ctx, len(agreement.survivors)
        for j in agreement.joined:
            rank = agreement.members.index(j)
            if transfer.donor_of(ctx.topology, rank, survivors) == ctx.rank:
                if self._rt is None:
                    raise RuntimeError("a process joined before this rank wrapped its optimizer")
                self.state_bytes_sent += transfer.send_state(
                    self._rt, rank, ctx.door, self.board.signer, agreement.epoch, j
                )

    def close(self) -> None:
        """Leave the job: stop the watcher thread, record that this rank finished (idempotent)."""
        if not self._stop.is_set() and self.store_lost is None:
            try:
                self.board.put(key("finished", self.original_rank))  # the launcher's view
            except Exception:  # noqa: BLE001 - the store is gone: nobody is left to tell
                pass
        self._stop.set()
        if self._watcher.is_alive() and self._watcher is not threading.current_thread():
            self._watcher.join()


def join_job(
    board: Board, spec: Any, weights: str, timeout: timedelta
) -> tuple[Topology, Membership, Agreement]:
    """A process started to join a running job: wait for admission, form the new group.

    Returns the grown topology, the membership of the new epoch and the admission; the default
    process group is the new epoch's. Blocks until the members admit this process.
    """
    my_id = int(os.environ[ID_ENV])
    log.info("saddle_torch.elastic: process %d asks to join the job", my_id)
    admitted = wait_for_admission(board, my_id, timeout)
    n = len(admitted.members)
    published = None
    if joined_topology_needs_graph(spec, n, weights):
        graph_key = key(admitted.epoch, "graph")
        deadline = time.monotonic() + timeout.total_seconds()
        while (raw := board.first(graph_key)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the members did not publish the topology of epoch {admitted.epoch}")
            time.sleep(POLL_SECONDS)
        doc = json.loads(raw)
        published = (doc["graph"], doc["name"])
    topo = joined_topology(spec, n, weights, published)
    form_group(board, admitted.epoch, admitted.members, my_id, timeout)
    membership = Membership(board, my_id, admitted.members, timeout)
    membership.epoch = admitted.epoch
    return topo, membership, admitted


__all__ = [
    "ID_ENV",
    "JOIN_ENV",
    "REPLACES_ENV",
    "STORE_ENV",
    "ElasticRuntime",
    "connect_board",
    "connect_store",
    "join_job",
    "suspects_of",
]
