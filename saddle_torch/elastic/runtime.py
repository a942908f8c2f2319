"""Elastic training: the survivors of a dead or stalled rank carry on without a restart.

``saddle_torch.init(elastic=True)`` under the launcher (``python -m saddle_torch.run``) attaches an
:class:`ElasticRuntime` to the gossip context. When a gossip round fails, ``DistributedOptimizer.step``
calls :meth:`ElasticRuntime.recover`: the survivors agree on the new membership through the
launcher's store (:mod:`saddle_torch.elastic.membership`), build a new Gloo group among themselves
under a fresh store prefix, repair the topology (:func:`saddle_torch.elastic.repair.repair`), start
CHOCO afresh, and the step is taken again. docs/errors.md says what is guaranteed.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from saddle_torch.elastic.membership import POLL_SECONDS, Agreement, Membership, key
from saddle_torch.elastic.repair import repair
from saddle_torch.errors import PeerError

if TYPE_CHECKING:
    from saddle_torch.context import GossipContext

STORE_ENV = "SADDLE_ELASTIC_STORE"  # host:port of the launcher's store, set by saddle_torch.run
log = logging.getLogger("saddle_torch.elastic")
_NEIGHBOUR = re.compile(r"with neighbour (\d+)")


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


def suspects_of(exc: BaseException, members: list[int]) -> list[int]:
    """Original ranks that ``exc`` blames: the neighbour of a failed round (not after an abort)."""
    text = str(exc)
    if "aborted:" in text:
        return []
    return sorted({members[int(m)] for m in _NEIGHBOUR.findall(text) if int(m) < len(members)})


class ElasticRuntime:
    """Membership, failure watcher and recovery of one elastic gossip context.

    Args:
        ctx: the context it belongs to.
        store: a client of the launcher's store.
        spec: the topology as given to ``init()`` (a name is rebuilt for the new size).
        weights: as given to ``init()``.
        join_window: how long a membership change waits for ranks that neither registered nor are
            known to be dead (default: the context's timeout).
    """

    def __init__(
        self,
        ctx: GossipContext,
        store: dist.Store,
        spec: Any,
        weights: str,
        join_window: timedelta,
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.spec = spec
        self.weights = weights
        self.membership = Membership(store, ctx.rank, list(range(ctx.size)), join_window)
        self.behind = 0  # steps this rank skips to line up with the others after a change
        self.history: list[Agreement] = []
        self._lock = threading.Lock()  # (membership.epoch, ctx.engine) change together
        self._stop = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch, args=(connect_store(ctx.timeout),), name="saddle-elastic", daemon=True
        )
        self._watcher.start()

    @property
    def original_rank(self) -> int:
        """This process's rank at launch."""
        return self.membership.original_rank

    @property
    def members(self) -> list[int]:
        """Original ranks of the current members, in rank order."""
        return list(self.membership.members)

    def _watch(self, store: dist.Store) -> None:
        """Abort this rank's rounds as soon as anyone marks the current epoch broken."""
        while not self._stop.wait(POLL_SECONDS):
            with self._lock:
                epoch, engine = self.membership.epoch, self.ctx.engine
            try:
                broken = store.check([key(epoch, "broken")])
                reason = store.get(key(epoch, "broken")).decode() if broken else ""
            except Exception:  # noqa: BLE001 - the store went away: the job is ending
                return
            with self._lock:
                if broken and self.membership.epoch == epoch and not engine.broken():
                    engine.abort(f"membership change ({reason})")

    def recover(self, exc: BaseException, completed_steps: int) -> Agreement:
        """After ``exc`` (a failed round), agree on the survivors and rebuild the context on them.

        Collective among the survivors. On return the context's group, rank, size, topology and engine
        are those of the new epoch, CHOCO state and gossip handshakes start afresh, and
        :attr:`behind` says how many steps this rank skips to line up with the most advanced survivor.

        Raises:
            FencedError: the others closed the membership without this rank.
        """
        ctx = self.ctx
        me = self.original_rank
        reason = f"rank {me}: {str(exc).splitlines()[0][:300]}"
        self.membership.report(reason, suspects_of(exc, self.membership.members))
        ctx.engine.abort(reason)
        while True:
            old_members = self.membership.members
            agreement = self.membership.agree(completed_steps)  # FencedError propagates
            positions = [old_members.index(r) for r in agreement.members]
            try:
                self._rebuild(agreement, positions)
                break
            except (RuntimeError, PeerError) as err:  # a member died while the group formed
                self.membership.report(f"rank {me}: forming epoch {agreement.epoch} failed: {err}")
        self.behind = agreement.steps - completed_steps
        self.history.append(agreement)
        if ctx.rank == 0:
            print(
                f"saddle_torch.elastic: membership epoch {agreement.epoch} at step {agreement.steps}: "
                f"rank(s) {agreement.departed} left (their data shards are no longer trained on); "
                f"{ctx.size} ranks continue on {ctx.topology.name}",
                file=sys.stderr,
                flush=True,
            )
        return agreement

    def _rebuild(self, agreement: Agreement, positions: list[int]) -> None:
        ctx = self.ctx
        topo = repair(self.spec, ctx.topology, positions, self.weights)
        with self._lock:
            ctx.engine.abort("membership change")
            ctx.engine.close()  # a broken engine keeps its Gloo group alive: never joins a dead peer
        if dist.is_initialized():
            dist.destroy_process_group()
        store = dist.PrefixStore(key(agreement.epoch, "pg") + "/", self.store)
        dist.init_process_group(
            "gloo",
            store=store,
            rank=agreement.members.index(self.original_rank),
            world_size=len(agreement.members),
            timeout=ctx.timeout,
        )
        with self._lock:
            ctx.rebind(dist.group.WORLD, topo)

    def close(self) -> None:
        """Stop the watcher thread (idempotent; before interpreter exit, while it can still finish)."""
        self._stop.set()
        if self._watcher.is_alive() and self._watcher is not threading.current_thread():
            self._watcher.join()


__all__ = ["STORE_ENV", "ElasticRuntime", "connect_store", "suspects_of"]
