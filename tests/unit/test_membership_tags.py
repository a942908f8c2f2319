"""Membership values carry HMAC tags under the job secret; untagged, forged and replayed ones change nothing.

Each test writes what a process without the secret could write into a real store (c10d's HashStore and
TCPStore) and checks that the protocol's readers ignore it, log it and act on the valid values only.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
import torch.distributed as dist

import saddle_torch as st
from saddle_torch.elastic.auth import Signer
from saddle_torch.elastic.board import Board, SignedStore, create_job, key, open_job
from saddle_torch.elastic.membership import Membership, close_list, current_epoch, grow_of

SECRET = b"0123456789abcdef0123456789abcdef"


def _board(store: dist.Store | None = None, secret: bytes = SECRET, job: str = "job-a") -> Board:
    return Board(store if store is not None else dist.HashStore(), Signer(secret, job))


def test_entries_keep_the_valid_ones_in_order_and_log_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    board = _board()
    k = key(3, "broken")
    board.store.append(k, b"attacker: untagged\n")  # written first: must not win
    board.store.append(k, b"attacker|" + b"00" * 32 + b"\n")  # a tag of the right length, wrong value
    board.post(k, "rank 2: neighbour 3 timed out")
    board.store.append(k, b"not hex|zz\n")
    board.post(k, "launcher: rank 3 was killed by SIGKILL")
    with caplog.at_level(logging.WARNING, logger="saddle_torch.elastic"):
        assert board.entries(k) == ["rank 2: neighbour 3 timed out", "launcher: rank 3 was killed by SIGKILL"]
        assert board.first(k) == "rank 2: neighbour 3 timed out"
        board.entries(k)  # read again: each ignored value is logged once
    ignored = [r for r in caplog.records if "ignored a value without a valid tag" in r.getMessage()]
    assert len(ignored) == 3 and all("saddle/elastic/3/broken" in r.getMessage() for r in ignored)


def test_a_value_copied_to_another_key_or_from_another_job_does_not_verify() -> None:
    store = dist.HashStore()
    board = _board(store)
    board.post(key(0, "final"), "0:10;1:10;2:10;")
    valid_line = store.get(key(0, "final"))
    store.append(key(4, "final"), valid_line)  # replayed into a later epoch
    assert board.first(key(4, "final")) is None
    other_job = _board(store, job="job-b")  # same secret, another job id
    assert other_job.first(key(0, "final")) is None
    wrong_secret = _board(store, secret=b"another secret of 32 bytes......")
    assert wrong_secret.first(key(0, "final")) is None
    board.put(key("dead", 1), "rank 1 was killed by SIGKILL")  # marks: the same
    store.set(key("dead", 2), store.get(key("dead", 1)))
    assert board.read(key("dead", 1)) == "rank 1 was killed by SIGKILL" and not board.has(key("dead", 2))


def test_a_forged_closing_list_that_drops_a_live_rank_is_ignored() -> None:
    """Written before the survivors close: a plain compare_set would have fenced rank 1."""
    board = _board()
    board.store.append(key(0, "final"), b"0:7;2:7;\n")  # untagged: drops live rank 1
    board.store.append(key(0, "broken"), b"forged\n")
    members = [Membership(board, r, [0, 1, 2], timedelta(seconds=5)) for r in range(3)]
    assert not members[0].broken()  # the forged mark is no failure
    out: dict[int, list[int]] = {}

    def agree(r: int) -> None:
        out[r] = members[r].agree(7).members

    threads = [threading.Thread(target=agree, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert out == {0: [0, 1, 2], 1: [0, 1, 2], 2: [0, 1, 2]}
    assert current_epoch(board) == 1


def test_an_untagged_join_request_or_growth_plan_admits_nobody() -> None:
    board = _board()
    board.store.append(key("join"), b"99\n")
    board.store.append(key(0, "grow"), b"5:99|" + b"ab" * 32 + b"\n")
    assert board.entries(key("join")) == [] and grow_of(board, 0) is None
    board.post(key(0, "alive"), "0:5")
    board.store.append(key(0, "alive"), b"99:-1\n")  # registers itself as a joiner, untagged
    assert close_list(board, 0, [0], timedelta(seconds=1), joiners=True) == {0: 5}


def test_a_process_with_another_secret_is_refused_by_the_job() -> None:
    store = dist.HashStore()
    board = create_job(store, SECRET)
    assert open_job(store, SECRET).signer.job == board.signer.job  # the job's id, verified
    with pytest.raises(st.AuthenticationError, match="secret is not the job's"):
        open_job(store, b"a different secret, 32 bytes....")


def test_a_rendezvous_address_without_a_valid_tag_is_refused() -> None:
    """SignedStore: what a Gloo group's rendezvous reads must carry the job's tag."""
    inner = dist.HashStore()
    signed = SignedStore(inner, Signer(SECRET, "job-a"))
    signed.set("0/pg//0//cpu//0/1", b"\x02\x00address of rank 1")
    assert signed.get("0/pg//0//cpu//0/1") == b"\x02\x00address of rank 1"
    inner.set("0/pg//0//cpu//0/1", b"\x02\x00the attacker's address" + b"\x00" * 32)
    with pytest.raises(st.AuthenticationError, match="no valid tag"):
        signed.get("0/pg//0//cpu//0/1")
    inner.set("short", b"x")
    with pytest.raises(st.AuthenticationError):
        signed.get("short")
