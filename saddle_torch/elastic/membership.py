"""Who is still in the job: membership epochs agreed through the launcher's key-value store.

Every rank of epoch ``e`` knows the members of ``e`` (their original ranks, in order: a member's new
rank is its position). When a rank fails a gossip round, or learns that another did, it runs
:meth:`Membership.agree`, which needs nothing but the store the launch already has:

1. ``e/broken`` is set (first reason wins): every rank's watcher sees it and aborts its rounds, so
   no survivor waits out the timeout on a neighbour that stopped gossiping.
2. Each survivor appends ``<original rank>:<completed steps>`` to ``e/alive`` (an atomic append).
3. The list is closed once every member of ``e`` has registered, is known dead (the launcher writes
   ``dead/<rank>`` when a process exits) or is suspected (a neighbour's round with it timed out or
   its connection closed) for 3 s without registering, or when the join window has passed.
   Closing is one ``compare_set`` of ``e/final`` to the list as it stands: the first rank to close
   wins and every rank reads the same value, so all survivors agree on the members of ``e + 1``
   without a coordinator.
4. A rank whose registration is not in ``e/final`` was dropped (it stalled past the timeout and came
   back): it is fenced and must exit (:class:`saddle_torch.FencedError`), never rejoin with a stale model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from saddle_torch.errors import FencedError

PREFIX = "saddle/elastic/"
POLL_SECONDS = 0.05
SUSPECT_GRACE_SECONDS = 3.0  # how long a suspected (not known dead) rank has to register


def key(*parts: object) -> str:
    """A store key under the elastic prefix, e.g. ``key(3, "broken")`` → ``saddle/elastic/3/broken``."""
    return PREFIX + "/".join(str(p) for p in parts)


def parse_alive(raw: bytes | str) -> dict[int, int]:
    """``"3:120;0:121;"`` → ``{3: 120, 0: 121}`` (original rank → completed steps), first entry wins."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    out: dict[int, int] = {}
    for item in text.split(";"):
        if item:
            rank, steps = item.split(":")
            out.setdefault(int(rank), int(steps))
    return out


@dataclass
class Agreement:
    """The outcome of one membership change."""

    epoch: int  # the new epoch
    members: list[int]  # original ranks, in new-rank order
    departed: list[int]  # original ranks of the old epoch that are gone
    steps: int  # the step every survivor continues from: the largest completed step count


class Membership:
    """This rank's view of the membership; ``store`` is a client of the launcher's store.

    Args:
        store: the launcher's TCPStore (a client connection of this rank's own).
        original_rank: this process's rank at launch (stable across membership changes).
        members: original ranks of the current epoch, in rank order.
        join_window: how long :meth:`agree` waits for members that neither registered nor are known
            dead or suspected.
    """

    def __init__(
        self, store: dist.Store, original_rank: int, members: list[int], join_window: timedelta
    ) -> None:
        self.store = store
        self.original_rank = original_rank
        self.members = list(members)
        self.epoch = 0
        self.join_window = join_window

    @property
    def rank(self) -> int:
        """This process's rank in the current epoch."""
        return self.members.index(self.original_rank)

    def report(self, reason: str, suspects: list[int] = ()) -> None:  # type: ignore[assignment]
        """Mark the current epoch broken (first reason wins) and record suspected original ranks."""
        for r in suspects:
            self.store.set(key(self.epoch, "suspect", r), reason)
        self.store.compare_set(key(self.epoch, "broken"), "", reason)

    def broken(self) -> bool:
        """Whether some rank (or the launcher) marked the current epoch broken."""
        return self.store.check([key(self.epoch, "broken")])

    def agree(self, completed_steps: int) -> Agreement:
        """Register as alive in the current epoch and return the agreed members of the next one.

        Raises:
            FencedError: the membership closed without this rank (it was dropped while stalled).
        """
        e, store = self.epoch, self.store
        store.append(key(e, "alive"), f"{self.original_rank}:{completed_steps};")
        deadline = time.monotonic() + self.join_window.total_seconds()
        grace = min(SUSPECT_GRACE_SECONDS, self.join_window.total_seconds())
        suspected_since: dict[int, float] = {}
        final_key = key(e, "final")
        while not store.check([final_key]):
            raw = store.get(key(e, "alive"))
            alive = parse_alive(raw)
            now = time.monotonic()
            gone = []
            for r in self.members:
                if r in alive:
                    continue
                if store.check([key("dead", r)]):
                    gone.append(r)
                elif store.check([key(e, "suspect", r)]):
                    # Timeouts cascade: a live rank blocked behind a stalled one is suspected by its
                    # own neighbours too. It registers as soon as it is aborted; give it the grace.
                    if now - suspected_since.setdefault(r, now) >= grace:
                        gone.append(r)
            if len(alive) + len(gone) >= len(self.members) or time.monotonic() > deadline:
                store.compare_set(final_key, "", raw)  # the first to close wins; others read it
                break
            time.sleep(POLL_SECONDS)
        final = parse_alive(store.get(final_key))
        if self.original_rank not in final:
            raise FencedError(
                f"saddle_torch: rank {self.original_rank} was dropped from the job at membership epoch {e} "
                f"(the others went on without it: it stalled or was cut off longer than the timeout). Its "
                "model is stale and it must not rejoin with it: exiting. Restart the process to rejoin."
            )
        members = [r for r in self.members if r in final]
        departed = [r for r in self.members if r not in final]
        store.compare_set(key("epoch"), str(e), str(e + 1))  # the launcher's view (it set "0")
        self.epoch, self.members = e + 1, members
        return Agreement(e + 1, members, departed, max(final.values()))


__all__ = ["Agreement", "Membership", "key", "parse_alive"]
