"""A joining process receives a member's model, optimizer and algorithm state over the new group.

The donor is a neighbour of the joiner in the grown topology (the lowest-ranked survivor among its
neighbours; rank 0 if it has none). What moves: the parameters (the flat buffers), the model's
buffers (BatchNorm statistics), the wrapped optimizer's state (momentum, Adam moments, the learning
rate of every group) and the algorithm's own buffers (QGM's m̂, QG-Adam's moments). What does not:
state tied to the graph (CHOCO's public copies, per-link error feedback), which every member starts
afresh at a membership change as well, and the round counters.

The message carries an HMAC tag under the job secret over the epoch, the joiner's id and the bytes
(:class:`~saddle_torch.elastic.auth.Signer`); the joiner checks it before it loads anything.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import torch

from saddle_torch.comm import Door
from saddle_torch.elastic.auth import TAG_BYTES, Signer
from saddle_torch.errors import AuthenticationError
from saddle_torch.topology import Topology

if TYPE_CHECKING:
    from saddle_torch.optim import SaddleRuntime

TAG = 0x1ADD1E  # below the gossip engine's tags (0x20000000 and up)


def donor_of(topology: Topology, joiner: int, survivors: int) -> int:
    """The rank that sends ``joiner`` its state: its lowest-ranked neighbour among the survivors."""
    near = sorted(
        {j for step in range(topology.period) for j in topology.neighbors(joiner, step) if j < survivors}
    )
    return near[0] if near else 0


def state_of(rt: SaddleRuntime) -> dict[str, Any]:
    """What a joiner needs from ``rt`` (CPU copies)."""
    phases: dict[str, Any] = {}
    for p in rt.phases:
        if not p.topology_bound:
            phases.update(p.state_dict(rt))
    model = rt.model
    return {
        "algorithm": rt.algorithm,
        "params": {k.name(): x.detach().to("cpu", copy=True) for k, x in rt.flat.buffers.items()},
        "buffers": {} if model is None else {n: b.detach().cpu() for n, b in model.named_buffers()},
        "optimizer": rt.base.state_dict(rt.optimizer),
        "phases": phases,
    }


def load_state(rt: SaddleRuntime, state: dict[str, Any], steps: int) -> None:
    """Put a donor's :func:`state_of` into ``rt`` and set its step counter to ``steps``.

    Raises:
        ValueError: the donor runs another algorithm or holds another model.
    """
    if state["algorithm"] != rt.algorithm:
        raise ValueError(
            f"the running job uses algorithm {state['algorithm']!r}, this process {rt.algorithm!r}"
        )
    params = state["params"]
    with torch.no_grad():
        for k, x in rt.flat.buffers.items():
            src = params.get(k.name())
            if src is None or src.shape != x.shape:
                raise ValueError(
                    f"the running job's model does not match this process's: parameter buffer {k.name()} "
                    f"is {None if src is None else tuple(src.shape)} there and {tuple(x.shape)} here"
                )
            x.copy_(src)
        if rt.model is not None:
            for name, b in rt.model.named_buffers():
                if name in state["buffers"]:
                    b.copy_(state["buffers"][name])
    rt.base.load_state_dict(rt.optimizer, state["optimizer"])
    for p in rt.phases:
        if not p.topology_bound and p.state_dict(rt):
            p.load_state_dict(rt, state["phases"])
    rt.step = steps


def state_key(epoch: int, joiner: int) -> str:
    """What a state message's tag binds it to: the epoch that admits the joiner, and the joiner's id."""
    return f"state/{epoch}/{joiner}"


def pack_state(rt: SaddleRuntime) -> bytes:
    """:func:`state_of` ``rt``, serialised."""
    buf = io.BytesIO()
    torch.save(state_of(rt), buf)
    return buf.getvalue()


def send_bytes(data: bytes, dst: int, door: Door, signer: Signer, epoch: int, joiner: int) -> int:
    """Send ``data`` and its tag to rank ``dst`` (process ``joiner``, admitted at ``epoch``); bytes sent."""
    tag = signer.tag(state_key(epoch, joiner), data)
    payload = torch.frombuffer(bytearray(data + tag), dtype=torch.uint8)
    what = f"sending the model and optimizer state to joining rank {dst}"
    door.send(torch.tensor([payload.numel()], dtype=torch.int64), dst, tag=TAG, what=what)
    door.send(payload, dst, tag=TAG, what=what)
    return 8 + payload.numel()


def send_state(rt: SaddleRuntime, dst: int, door: Door, signer: Signer, epoch: int, joiner: int) -> int:
    """Send :func:`state_of` to rank ``dst`` of ``door``'s group (which calls :func:`recv_state`).

    ``joiner`` is that rank's process id and ``epoch`` the epoch that admits it (both in the tag).
    Returns the bytes sent.
    """
    return send_bytes(pack_state(rt), dst, door, signer, epoch, joiner)


def recv_state(src: int, door: Door, signer: Signer, epoch: int, joiner: int) -> tuple[dict[str, Any], int]:
    """Receive what rank ``src`` of ``door``'s group sends with :func:`send_state`: ``(state, bytes)``.

    Raises:
        AuthenticationError: the message's tag does not verify (tampered, or from another job or
            admission); nothing of it is loaded.
    """
    what = f"receiving the model and optimizer state from rank {src}"
    size = int(door.recv(torch.zeros(1, dtype=torch.int64), src, tag=TAG, what=what))
    if size < TAG_BYTES:
        raise AuthenticationError(
            f"saddle_torch: the state message from rank {src} is too short to carry a tag ({size} bytes)"
        )
    raw = door.recv(torch.empty(size, dtype=torch.uint8), src, tag=TAG, what=what).numpy().tobytes()
    data, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
    if not signer.verify(state_key(epoch, joiner), data, tag):
        raise AuthenticationError(
            f"saddle_torch: the model and optimizer state received from rank {src} failed its integrity "
            f"check (HMAC under the job secret, epoch {epoch}, process {joiner}): refused, nothing loaded"
        )
    return torch.load(io.BytesIO(data), weights_only=True), 8 + size


__all__ = [
    "donor_of",
    "load_state",
    "pack_state",
    "recv_state",
    "send_bytes",
    "send_state",
    "state_key",
    "state_of",
]
