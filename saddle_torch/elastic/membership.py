"""Who is still in the job: membership epochs agreed through the launcher's key-value store.

Every rank of epoch ``e`` knows the members of ``e`` (their original ranks, in order: a member's new
rank is its position). When a rank fails a gossip round, or learns that another did, it runs
:meth:`Membership.agree`, which needs nothing but the store the launch already has:

1. ``e/broken`` is set (first reason wins): every rank's watcher sees it and aborts its rounds, so
   no survivor waits out the timeout on a neighbour that stopped gossiping.
2. Each survivor appends ``<original rank>:<completed steps>`` to ``e/alive`` (an atomic append).
3. The list is closed once every member of ``e`` has registered, is known dead (the launcher writes
   ``dead/<rank>`` when a process exits) or is suspected (a neighbour's round with it timed out or
   its connection closed) for 3 s without registering, or when the join window has passed. A
   member still setting up (between ``init()`` and its optimizer: its main thread may sit in a
   Gloo collective such as ``broadcast_parameters``, which no abort reaches and which ends only at
   the group's timeout) is marked ``e/busy/<rank>`` by its watcher thread, and so is a member
   forming the new epoch's group (Gloo's connect, which no abort reaches either, waits up to 5
   timeouts for a member that died after publishing its address); the list waits for it to register
   for up to :data:`BUSY_WINDOWS` more join windows. A stalled process cannot mark itself (its watcher is
   stopped too), so a SIGSTOPped rank still gets 3 s.
   Closing appends the list as it stands to the log ``e/final``: the first valid entry wins and
   every rank reads the same one, so all survivors agree on the members of ``e + 1`` without a
   coordinator.
4. A rank whose registration is not in ``e/final`` was dropped (it stalled past the timeout and came
   back): it is fenced and must exit (:class:`saddle_torch.FencedError`), never rejoin with a stale model.

Growing uses the same list. A new process (a restart, or ``--join``) gets a fresh id (``next_id``,
never reused, so a fenced or dead rank's keys never apply to it) and appends it to ``join``. A
member's watcher that sees an id not yet admitted writes ``e/grow = "<step>:<ids>"`` (first writer
wins), ``step`` far enough ahead that no member has passed it (members are at most the graph's
diameter apart). Every member checks ``e/grow`` at the start of each step and, at that step, runs
:meth:`Membership.agree` expecting the joiners too; a joiner registers as ``<id>:-1`` once it sees
itself in ``e/grow`` (:func:`wait_for_admission`). Members of ``e + 1`` are the old members that
registered, in order, then the admitted joiners by id; ``e+1/members`` records them for joiners.

Every value above is tagged under the job secret (:mod:`saddle_torch.elastic.board`): a value
without a valid tag (written by a process without the secret, or copied from another key or job) is
ignored and logged. "First writer wins" means the first *valid* entry of an append-only log, so an
untagged value written first blocks nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

from saddle_torch.elastic.board import Board, key
from saddle_torch.errors import FencedError

POLL_SECONDS = 0.05
SUSPECT_GRACE_SECONDS = 3.0  # how long a suspected (not known dead) rank has to register
# How many join windows past the first a busy rank is waited for. A rank blocked in Gloo's connect
# to a member that died after publishing its address gives up only after 5 timeouts (measured with
# torch 2.13 for timeouts of 3, 5 and 10 s, with and without GLOO_DISABLE_CONNECTION_RETRIES;
# docs/errors.md): it started forming no later than the rank that closes the list.
BUSY_WINDOWS = 5


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
    members: list[int]  # original ranks (ids), in new-rank order: survivors, then joiners
    departed: list[int]  # original ranks of the old epoch that are gone
    steps: int  # the step every survivor continues from: the largest completed step count
    joined: list[int] = field(default_factory=list)  # ids admitted in this change (new processes)
    previous: list[int] = field(default_factory=list)  # members of the old epoch, in old-rank order

    @property
    def survivors(self) -> list[int]:
        """Members of the old epoch that carry on, in new-rank order."""
        return [r for r in self.members if r not in self.joined]


def parse_ids(raw: bytes | str) -> list[int]:
    """``"8;9;"`` or ``"8,9"`` → ``[8, 9]``."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    return [int(t) for t in text.replace(",", ";").split(";") if t]


def parse_grow(raw: bytes | str) -> tuple[int, list[int]]:
    """``"140:8,9"`` (the ``e/grow`` value) → ``(140, [8, 9])``: the step and the ids it admits."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    step, _, ids = text.partition(":")
    return int(step), parse_ids(ids)


def alive_of(board: Board, epoch: int) -> dict[int, int]:
    """``epoch``'s alive list as registered so far: valid entries only, first entry per rank wins."""
    return parse_alive(";".join(board.entries(key(epoch, "alive"))))


def current_epoch(board: Board) -> int:
    """The newest membership epoch any member recorded (the ``epoch`` log only grows)."""
    return max((int(e) for e in board.entries(key("epoch")) if e.isdigit()), default=0)


def members_of(board: Board, epoch: int) -> list[int] | None:
    """The members of ``epoch`` as recorded (``None`` until recorded)."""
    raw = board.first(key(epoch, "members"))
    return None if raw is None else parse_ids(raw)


def grow_of(board: Board, epoch: int) -> tuple[int, list[int]] | None:
    """``epoch``'s planned growth ``(step, ids)``, or ``None``."""
    raw = board.first(key(epoch, "grow"))
    return None if raw is None else parse_grow(raw)


def final_of(board: Board, epoch: int) -> dict[int, int] | None:
    """``epoch``'s closed alive list, or ``None`` while it is open."""
    raw = board.first(key(epoch, "final"))
    return None if raw is None else parse_alive(raw)


def close_list(
    board: Board, epoch: int, expected: list[int], join_window: timedelta, joiners: bool = False
) -> dict[int, int]:
    """Wait until ``epoch``'s alive list can close, close it (first closer wins) and return it.

    Closes when every rank of ``expected`` registered or is known dead (``dead/<r>``) or suspected for
    :data:`SUSPECT_GRACE_SECONDS`, or when ``join_window`` has passed. A rank marked busy
    (``epoch/busy/<r>``: alive, blocked in a set-up collective or in forming the group) is waited for
    until it registers or dies, for at most :data:`BUSY_WINDOWS` more join windows. With ``joiners``
    the ids of ``epoch/grow`` (when set) are expected as well. Only tagged values count (:class:`Board`).
    """
    deadline = time.monotonic() + join_window.total_seconds()
    grace = min(SUSPECT_GRACE_SECONDS, join_window.total_seconds())
    suspected_since: dict[int, float] = {}
    while (final := final_of(board, epoch)) is None:
        alive = alive_of(board, epoch)
        wanted = list(expected)
        grow = grow_of(board, epoch) if joiners else None
        if grow is not None:
            wanted += [j for j in grow[1] if j not in wanted]
        now = time.monotonic()
        settled, busy = 0, False
        for r in wanted:
            if r in alive or board.has(key("dead", r)):
                settled += 1
            elif board.has(key(epoch, "busy", r)):
                busy = True  # alive: registers once its collective times out
            elif board.has(key(epoch, "suspect", r)):
                # Timeouts cascade: a live rank blocked behind a stalled one is suspected by its
                # own neighbours too. It registers as soon as it is aborted; give it the grace.
                if now - suspected_since.setdefault(r, now) >= grace:
                    settled += 1
        extra = BUSY_WINDOWS * join_window.total_seconds() if busy else 0.0
        if settled >= len(wanted) or now > deadline + extra:
            # The first valid closing entry wins; every rank reads the same one. A rank that
            # registered and died since (the launcher saw it exit) is left out: the group would wait
            # for it.
            closing = {r: s for r, s in alive.items() if not board.has(key("dead", r))}
            board.post(key(epoch, "final"), "".join(f"{r}:{s};" for r, s in closing.items()))
            continue
        time.sleep(POLL_SECONDS)
    return final


def next_members(previous: list[int], final: dict[int, int]) -> tuple[list[int], list[int]]:
    """Members of the next epoch from the closed list: ``(members, joined)``."""
    joined = sorted(r for r in final if r not in previous)
    return [r for r in previous if r in final] + joined, joined


def wait_for_admission(board: Board, my_id: int, join_window: timedelta) -> Agreement:
    """A joiner: request admission, wait until a membership change admits it, return that change.

    Polls the current epoch's ``grow`` key; once it names ``my_id``, registers in that epoch's alive
    list and waits for it to close. Not in the closed list (registered too late, or the change was
    a failure that closed first): waits for the next epoch. Blocks until admitted.
    """
    board.post(key("join"), str(my_id))
    while True:
        e = current_epoch(board)
        grow = grow_of(board, e)
        if grow is not None and my_id in grow[1]:
            board.post(key(e, "alive"), f"{my_id}:-1")
            while (final := final_of(board, e)) is None:
                time.sleep(POLL_SECONDS)
            if my_id in final:
                previous = members_of(board, e)
                if previous is None:  # recorded by the members before they planned the growth
                    raise RuntimeError(f"saddle_torch: epoch {e} admitted this process but has no members")
                members, joined = next_members(previous, final)
                departed = [r for r in previous if r not in final]
                steps = max(final.values())
                return Agreement(e + 1, members, departed, steps, joined, previous)
            while current_epoch(board) == e:  # the others move to e + 1 first
                time.sleep(POLL_SECONDS)
            continue
        time.sleep(POLL_SECONDS)


class Membership:
    """This rank's view of the membership; ``board`` holds the tagged values on the launcher's store.

    Args:
        board: the launcher's store (a client connection of this rank's own) with the job's signer.
        original_rank: this process's rank at launch (stable across membership changes).
        members: original ranks of the current epoch, in rank order.
        join_window: how long :meth:`agree` waits for members that neither registered nor are known
            dead or suspected.
    """

    def __init__(self, board: Board, original_rank: int, members: list[int], join_window: timedelta) -> None:
        self.board = board
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
            self.board.put(key(self.epoch, "suspect", r), reason)
        self.board.post(key(self.epoch, "broken"), reason)

    def broken(self) -> bool:
        """Whether some rank (or the launcher) marked the current epoch broken."""
        return self.board.first(key(self.epoch, "broken")) is not None

    def agree(self, completed_steps: int, joiners: bool = False) -> Agreement:
        """Register as alive in the current epoch and return the agreed members of the next one.

        Args:
            completed_steps: this rank's completed step count.
            joiners: wait for the ids of the epoch's ``grow`` key too (a planned growth at a step
                boundary; a failure does not wait for joiners, who then try the next epoch).

        Raises:
            FencedError: the membership closed without this rank (it was dropped while stalled).
        """
        e, board = self.epoch, self.board
        board.post(key(e, "alive"), f"{self.original_rank}:{completed_steps}")
        final = close_list(board, e, self.members, self.join_window, joiners)
        if self.original_rank not in final:
            raise FencedError(
                f"saddle_torch: rank {self.original_rank} was dropped from the job at membership epoch {e} "
                f"(the others went on without it: it stalled or was cut off longer than the timeout). Its "
                "model is stale and it must not rejoin with it: exiting. Restart the process to rejoin."
            )
        previous = self.members
        members, joined = next_members(previous, final)
        departed = [r for r in previous if r not in final]
        if members_of(board, e + 1) is None:  # for joiners and the launcher; the first entry counts
            board.post(key(e + 1, "members"), ",".join(map(str, members)))
        board.post(key("epoch"), str(e + 1))  # the launcher's and joiners' view
        self.epoch, self.members = e + 1, members
        steps = max(v for r, v in final.items() if r in previous)
        return Agreement(e + 1, members, departed, steps, joined, previous)


__all__ = [
    "Agreement",
    "Membership",
    "alive_of",
    "close_list",
    "current_epoch",
    "final_of",
    "grow_of",
    "key",
    "members_of",
    "next_members",
    "parse_alive",
    "parse_grow",
    "parse_ids",
    "wait_for_admission",
]
