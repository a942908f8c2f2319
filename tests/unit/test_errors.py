"""``except saddle_torch.SaddleError`` catches every error the library raises, from Python and from C++.

Each error is provoked through the real code path that raises it (the C++ ones through the native
extension's translation), and keeps its built-in base and its structured fields.
"""

from __future__ import annotations

import pickle
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import saddle_torch as st
from saddle_torch import kernels
from saddle_torch.elastic.auth import Signer
from saddle_torch.elastic.board import Board
from saddle_torch.elastic.membership import Membership, key
from saddle_torch.gossip import GossipContext
from saddle_torch.gossip.registry import Names


@pytest.fixture(scope="module")
def ctx() -> GossipContext:
    return st.init()


def _raises(fn, kind: type[BaseException], builtin: type[BaseException]) -> BaseException:
    try:
        fn()
    except st.SaddleError as exc:  # the one clause a training loop needs
        assert isinstance(exc, kind) and isinstance(exc, builtin), type(exc).__mro__
        return exc
    pytest.fail(f"expected {kind.__name__}")


def test_a_corrupt_message_from_the_codec_is_a_saddle_error() -> None:
    codec = st.Compression.int8.native
    msg = kernels.codec_encode(codec, torch.randn(300), 7)
    msg[20] ^= 0xFF  # the element count, under the header's checksum
    exc = _raises(lambda: kernels.codec_decode(codec, msg, 300, 7), st.CorruptMessageError, RuntimeError)
    assert exc.peer is None and "checksum" in str(exc)


def test_an_aborted_engine_raises_peer_error_with_its_fields(ctx: GossipContext) -> None:
    other = GossipContext(ctx.group, st.topology.ring(1), timedelta(seconds=5))
    try:
        other.engine.abort("membership change (test)")
        exc = _raises(lambda: other.engine.start(torch.zeros(3), 0), st.PeerError, RuntimeError)
        assert exc.aborted and exc.peer is None and "membership change (test)" in str(exc)
    finally:
        other.close()


def test_a_mismatched_gossip_name_is_a_saddle_error(ctx: GossipContext) -> None:
    names = Names()
    none = st.Compression.none
    assert names.register("w", torch.zeros(3), none, ctx.door)
    exc = _raises(lambda: names.register("w", torch.zeros(4), none, ctx.door), st.MismatchError, ValueError)
    assert "shape (3,)" in str(exc) and "shape (4,)" in str(exc)


def test_a_rank_left_out_of_the_membership_is_fenced() -> None:
    board = Board(dist.HashStore(), Signer(b"0123456789abcdef", "job"))
    board.post(key(0, "final"), "1:5;")  # the others closed epoch 0 without rank 0
    membership = Membership(board, 0, [0, 1], timedelta(seconds=1))
    exc = _raises(lambda: membership.agree(4), st.FencedError, RuntimeError)
    assert "rank 0 was dropped" in str(exc)


def test_peer_error_keeps_its_fields_through_pickle_and_is_not_fenced() -> None:
    exc = st.PeerError("gossip recv with neighbour 2 failed", peer=2)
    back = pickle.loads(pickle.dumps(exc))
    assert isinstance(back, st.PeerError) and back.peer == 2 and not back.aborted and str(back) == str(exc)
    assert not isinstance(exc, st.FencedError) and not issubclass(st.FencedError, st.PeerError)
    # No input reaches a core invariant check (the binding validates first); its class is in place.
    assert issubclass(st.InternalError, st.SaddleError) and issubclass(st.InternalError, RuntimeError)
    assert issubclass(st.CompressionWarning, st.SaddleWarning) and issubclass(
        st.DifferentStartWarning, UserWarning
    )
