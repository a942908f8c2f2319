"""Gossip that does not wait for a slow neighbour: asynchronous push-sum (SGP; Assran et al., ICML 2019).

Synchronous gossip lets a rank run at most its graph distance ahead of a straggler, so after a few
steps every rank runs at the straggler's pace. Here no rank waits for a message it does not need:

- every rank keeps a numerator x and a weight w; its model is z = x / w; a local step that moves z
  by Δ adds Δ to x (as SGP does), so the numerators' sum moves by the plain sum of the local
  updates and the de-biased average Σx / Σw follows the average of the ranks' updates (each rank's
  data counts once, however much weight it holds);
- each step it sends an equal share of (x, w) to every out-neighbour whose link is free (its previous
  message was delivered) and keeps one share; a busy link gets nothing this step, so a slow link
  carries fewer messages instead of holding the sender back, and mass never waits in a queue;
- whatever has arrived from the in-neighbours is added to (x, w) — a message from a slow neighbour is
  simply applied later.

Mass is never created or lost: Σ_i x_i + the messages in flight is conserved exactly (up to
rounding), and so is Σ w, so the de-biased average Σx / Σw does not drift however late the
messages are; :meth:`PushSum.drain` (on every rank) delivers what is in flight, after which the
models' w-weighted mean is the mean they started from plus the local updates. ``max_staleness`` bounds how
far behind a neighbour may fall: a rank whose newest message from an in-neighbour is more than that
many of its own steps old waits for one (``None``: never waits).
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import torch


class Transport(Protocol):
    """Point-to-point messages that do not wait for each other (``saddle_torch._ops.Mailbox``)."""

    def send(self, peer: int, tensor: torch.Tensor) -> None:
        """Post ``tensor`` to ``peer`` (the last send to it has completed)."""

    def recv(self, peer: int, tensor: torch.Tensor) -> None:
        """Post a receive from ``peer`` into ``tensor``."""

    def sent(self, peer: int) -> bool:
        """Whether the last send to ``peer`` completed."""

    def received(self, peer: int) -> bool:
        """Whether the last receive from ``peer`` completed."""

    def wait_received(self, peer: int) -> None:
        """Block until the last receive from ``peer`` completed (``PeerError`` if it failed)."""


# A rank keeps its mass below this push-sum weight (1 at the start, near 1 while every rank sends):
# its model moves by its local update / w, so w is kept from shrinking far below 1.
MIN_WEIGHT = 0.25


class PushSum:
    """Asynchronous push-sum gossip of one flat tensor on one rank.

    Args:
        transport: the mailbox (or, in a simulation, anything with its methods).
        in_peers: every rank that may send to this one (over a time-varying graph's whole period).
        out_peers: every rank this one may send to (over the period): each gets a closing message.
        numel: elements of the tensor; dtype: its dtype.
        max_staleness: wait for an in-neighbour whose newest message is older than this many steps of
            this rank (``None``: never wait).
    """

    def __init__(
        self,
        transport: Transport,
        in_peers: list[int],
        out_peers: list[int],
        numel: int,
        dtype: torch.dtype,
        max_staleness: int | None = None,
    ) -> None:
        self.transport = transport
        self.out_peers = sorted(out_peers)
        self.n = numel
        self.max_staleness = max_staleness
        self.w = 1.0
        self.steps = 0
        self.x = torch.zeros(numel, dtype=dtype)  # the numerator, w·z between steps
        self.outbox = {j: torch.zeros(numel + 1, dtype=dtype) for j in self.out_peers}  # on the wire
        self.sent_count = dict.fromkeys(self.out_peers, 0)
        self.inbox = {j: torch.empty(numel + 1, dtype=dtype) for j in in_peers}
        self.applied = dict.fromkeys(in_peers, 0)  # messages added, per in-neighbour
        self.last = dict.fromkeys(in_peers, 0)  # this rank's step at each one's last message
        self.open: set[int] = set()  # in-neighbours whose closing message is still due (draining)
        self.closing: set[int] = set()  # out-neighbours this rank still owes a closing message
        self.closed: set[int] = set()  # in-neighbours whose last message was a closing one
        self.drained = True  # nothing of this rank's mass is on the wire (no step since drain())
        for j in in_peers:
            transport.recv(j, self.inbox[j])

    # -- one step ------------------------------------------------------------------------------------
    def mix(self, z: torch.Tensor, out_peers: list[int]) -> None:
        """One step: ``z`` (this rank's model after its local update, flat, in place) becomes x / w.

        The local update (``z`` minus the model the last step left, x / w) is added to x unscaled.

        Of ``out_peers`` (this step's out-neighbours) only those whose link is free get a share: mass
        leaves only when it can go on the wire at once, so a slow link takes less, and no weight
        drains away into a queue.

        Raises:
            PeerError: a message to or from a neighbour failed (it died, or the timeout passed).
        """
        with torch.no_grad():
            self.x.mul_(1.0 - 1.0 / self.w).add_(z)  # x + (z − x / w): the update, unscaled
            # A rank that hears from no one (its neighbours stopped, its links are slow) would halve its
            # weight every step until it underflows: below MIN_WEIGHT it gives nothing until it hears.
            free = [j for j in out_peers if self.transport.sent(j)] if self.w >= MIN_WEIGHT else []
            share = 1.0 / (len(free) + 1)
            for j in free:
                box = self.outbox[j]
                torch.mul(self.x, share, out=box[: self.n])
                box[self.n] = share * self.w
                self._send(j)
            self.x.mul_(share)
            self.w *= share
            self._receive(wait=False)
            torch.div(self.x, self.w, out=z)
        self.steps += 1
        self.drained = False

    def _send(self, j: int) -> None:
        self.transport.send(j, self.outbox[j])
        self.sent_count[j] += 1

    def _take(self, j: int) -> None:
        msg = self.inbox[j]
        w = float(msg[self.n])
        self.last[j] = self.steps
        if math.isnan(w):  # j's closing message: it drained, and may now leave the job
            self.open.discard(j)
            self.closed.add(j)
        else:
            self.closed.discard(j)  # j is training again
            self.x.add_(msg[: self.n])
            self.w += w
            self.applied[j] += 1
        self.transport.recv(j, msg)  # the next message from j lands in the same buffer

    def _arrived(self, j: int) -> bool:
        """Whether j's next message is here; a link to a neighbour that drained may fail (it left)."""
        if j not in self.closed:
            return self.transport.received(j)
        try:
            return self.transport.received(j)
        except RuntimeError:  # PeerError: the neighbour that said goodbye is gone; nothing is owed
            return False

    def _receive(self, wait: bool) -> None:
        for j in self.inbox:
            stale = (
                self.max_staleness is not None
                and j not in self.closed
                and self.steps - self.last[j] > self.max_staleness
            )
            if wait or stale:
                self.transport.wait_received(j)
                self._take(j)
            elif self._arrived(j):
                self._take(j)

    # -- the end ---------------------------------------------------------------------------------------
    def drain(self, z: torch.Tensor, poll_seconds: float = 0.001) -> None:
        """Deliver every message still owed to this rank; ``z`` becomes x / w (every rank calls it).

        A *closing* message (weight NaN, no mass) goes to every out-neighbour once its link is free;
        this rank takes what arrives until each in-neighbour's closing message came. Links deliver in
        order, so by then every message sent before it has been added. Nothing here blocks on a send
        or waits in a collective: a rank that did could wait for a neighbour that is itself waiting
        for a link this rank no longer drains.
        """
        self.start_drain()
        while not self.drain_step():
            time.sleep(poll_seconds)  # a failed link raises from the step's own checks
        self.model(z)
        self.drained = True

    def start_drain(self) -> None:
        """Begin :meth:`drain`: every out-neighbour is owed a closing message, every in-neighbour owes one."""
        self.closing = set(self.out_peers)
        self.open = set(self.inbox) - self.closed

    def drain_step(self) -> bool:
        """One pass of :meth:`drain` (never blocks); whether it is complete."""
        with torch.no_grad():
            for j in sorted(self.closing):
                if self.transport.sent(j):
                    self.outbox[j].zero_()
                    self.outbox[j][self.n] = math.nan  # the closing message: the receiver adds nothing
                    self._send(j)
                    self.closing.discard(j)
            for j in sorted(self.open):  # only what is still owed: a finished neighbour may have left
                if self._arrived(j):
                    self._take(j)
        delivered = all(self.transport.sent(j) for j in self.outbox)  # a neighbour may still need ours
        return not self.closing and not self.open and delivered

    def reset(self, z: torch.Tensor, w: float) -> None:
        """Restart from model ``z`` with weight ``w`` (a checkpoint's): x = w · z."""
        with torch.no_grad():
            self.w = float(w)
            torch.mul(z, self.w, out=self.x)

    def model(self, z: torch.Tensor) -> None:
        """``z`` ← x / w, the de-biased model."""
        with torch.no_grad():
            torch.div(self.x, self.w, out=z)

    def state(self) -> dict[str, Any]:
        """Counters for inspection."""
        return {
            "w": self.w,
            "steps": self.steps,
            "sent": dict(self.sent_count),
            "applied": dict(self.applied),
        }


__all__ = ["PushSum", "Transport"]
