"""The launch of an elastic job: epoch 0's group, or epoch 1's when a rank died before it formed.

``dist.init_process_group`` needs every rank of the launch. A rank that dies before it (while it
imports torch or loads its data, say) would leave the others waiting out the timeout and then fail
with the store's ``wait timeout`` error. :func:`start_job` forms the group only once every launch rank
has reached ``init()``; if one is reported dead (the launcher writes ``dead/<rank>`` and marks epoch 0
broken) or has not come within the timeout, the ranks that came agree on the members through
:meth:`~saddle_torch.elastic.membership.Membership.agree` at step 0, exactly as after a failure
mid-training, and form epoch 1's group instead. A rank that reaches ``init()`` after that is fenced
(:class:`saddle_torch.FencedError`). A rank that dies while the group forms fails the others'
``init_process_group`` (at once, or at the timeout): they agree the same way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import timedelta

from saddle_torch.comm import form_epoch_group
from saddle_torch.elastic.board import Board, SignedStore
from saddle_torch.elastic.membership import POLL_SECONDS, Agreement, Membership, key, parse_ids

log = logging.getLogger("saddle_torch.elastic")


def form_group(board: Board, epoch: int, members: list[int], me: int, timeout: timedelta) -> None:
    """Make the Gloo group of membership ``epoch`` (store prefix ``<epoch>/pg/``) the default group.

    Collective among the epoch's ``members`` (original ids, in rank order; ``me`` is this process's).
    The previous default group, if any, is destroyed first. The members' addresses are tagged
    (:class:`~saddle_torch.elastic.board.SignedStore`): an address a process without the secret wrote
    fails the group (``AuthenticationError``), never connects to it.

    While it forms, this process is marked ``<epoch>/busy/<me>``: Gloo's connect cannot be aborted and
    a member that dies meanwhile holds the others there for 5 timeouts (measured), while those that
    dialled it fail at once. When those start the next membership change, they wait for this process
    to register (:func:`~saddle_torch.elastic.membership.close_list`) instead of closing the list
    without it.
    """
    busy = key(epoch, "busy", me)
    board.put(busy)
    try:
        store = SignedStore(board.store, board.signer)
        form_epoch_group(store, key(epoch, "pg") + "/", members.index(me), len(members), timeout)
    finally:
        with contextlib.suppress(Exception):  # a store that is gone fails the caller's next call
            board.delete(busy)


def _launch_group(board: Board, rank: int, world: int, timeout: timedelta) -> str | None:
    """Form epoch 0's group once every launch rank is ready; ``None``, or why it could not be formed."""
    board.post(key(0, "ready"), str(rank))
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        broken = board.first(key(0, "broken"))
        if broken is not None:
            return broken
        ready = {i for r in board.entries(key(0, "ready")) for i in parse_ids(r)}
        if len(ready) >= world:
            break
        if time.monotonic() > deadline:
            missing = sorted(set(range(world)) - ready)
            return f"rank {rank}: rank(s) {missing} did not reach init() within the timeout ({timeout})"
        time.sleep(POLL_SECONDS)
    try:
        form_group(board, 0, list(range(world)), rank, timeout)
    except RuntimeError as err:  # a rank died while the group formed (DistStoreError, Gloo's errors)
        return f"rank {rank}: forming the launch group failed: {str(err).splitlines()[0][:300]}"
    return None


def start_job(board: Board, rank: int, world: int, timeout: timedelta) -> tuple[Membership, list[Agreement]]:
    """Form the job's first group; the default process group is its group on return.

    Args:
        board: a client of the launcher's store, with the job's signer.
        rank: this process's launch rank.
        world: the number of ranks at launch.
        timeout: how long to wait for the other ranks to reach ``init()``, and the group's timeout.

    Returns:
        This rank's membership, and the membership changes made at launch (none when every rank of
        the launch is in the group).

    Raises:
        FencedError: this rank came after the others had gone on without it.
    """
    membership = Membership(board, rank, list(range(world)), timeout)
    reason = _launch_group(board, rank, world, timeout)
    if reason is None:
        return membership, []
    membership.report(reason)
    changes: list[Agreement] = []
    while True:
        agreement = membership.agree(0)  # FencedError propagates
        changes.append(agreement)
        try:
            form_group(board, agreement.epoch, agreement.members, rank, timeout)
        except RuntimeError as err:  # a survivor died while the new group formed: agree again
            membership.report(f"rank {rank}: forming epoch {agreement.epoch} failed: {err}")
            continue
        if rank == agreement.members[0]:
            missing = sorted(set(range(world)) - set(agreement.members))
            log.warning(
                "saddle_torch.elastic: rank(s) %s did not join the job at launch (%s); their data shards "
                "are not trained on; %d ranks start",
                missing,
                reason,
                len(agreement.members),
            )
        return membership, changes


__all__ = ["form_group", "start_job"]
