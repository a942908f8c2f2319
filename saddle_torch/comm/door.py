"""The door: every collective the library issues on a process group goes through one :class:`Door`.

Gossip rounds go through the C++ engine, which raises :class:`~saddle_torch.PeerError` itself. Everything
else — the set-up handshakes (same shapes, same topology, same start), the γ broadcast, the exact
average of ``algorithm="allreduce"``, the DDP hook's warm-up all-reduce, ``broadcast_parameters``,
``consensus_distance``, an elastic joiner's state transfer — is a ``torch.distributed`` call made here
and nowhere else (``tests/unit/test_layers.py`` reads the package and fails on one made elsewhere). So:

- a transport failure (a rank died, stalled past the timeout or closed its connection) always
  reaches the caller as ``PeerError``, never as Gloo's raw ``RuntimeError``; under
  ``init(elastic=True)`` the step that met it is then recovered like a failed gossip round;
- :attr:`Door.blocked` says whether a thread of this process is waiting inside a collective. No abort
  reaches a Gloo collective (it ends at the group's timeout), so the elastic watcher vouches for such
  a rank while the others agree on the new membership (``saddle_torch.elastic.membership``);
- :meth:`Door.agree` is the one "all-gather a digest and compare" handshake.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from saddle_torch.errors import PeerError, SaddleError

T = TypeVar("T")


def crc_of(tensors: Iterable[torch.Tensor], start: int = 0) -> int:
    """CRC-32 of the bytes of ``tensors`` (copied to CPU), chained in order."""
    crc = start
    for t in tensors:
        data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        crc = zlib.crc32(data.numpy(), crc)
    return crc


class Door:
    """The collectives of one process group, each turning a transport failure into ``PeerError``.

    Args:
        group: a process group with a CPU (Gloo) backend.
    """

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.calls = 0  # collectives issued through this door
        self._blocked = 0
        self._lock = threading.Lock()
        self._failure: PeerError | None = None

    # -- state ----------------------------------------------------------------------------------------
    @property
    def blocked(self) -> bool:
        """Whether a thread is inside one of this door's blocking collectives right now."""
        return self._blocked > 0

    def errored(self) -> PeerError | None:
        """The first transport failure this door met (``None`` while the group is healthy)."""
        return self._failure

    def _peer_error(self, what: str, exc: BaseException) -> PeerError:
        err = PeerError(
            f"saddle_torch: rank {self.rank}: {what} failed: a rank died, stalled past the timeout or closed "
            f"its connection. Transport said: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        )
        if self._failure is None:
            self._failure = err
        return err

    @contextmanager
    def _through(self, what: str) -> Iterator[None]:
        with self._lock:
            self._blocked += 1
            self.calls += 1
        try:
            yield
        except SaddleError:
            raise
        except RuntimeError as exc:  # Gloo's errors, DistBackendError, DistStoreError
            raise self._peer_error(what, exc) from exc
        finally:
            with self._lock:
                self._blocked -= 1

    def run(self, fn: Callable[[], T], *, what: str) -> T:
        """``fn()``, a collective on this door's group (the door's own, or DDP's constructor's).

        Its transport failures become ``PeerError``, and the process counts as blocked meanwhile.
        """
        with self._through(what):
            return fn()

    # -- collectives ----------------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, *, what: str) -> torch.Tensor:
        """Sum ``tensor`` over the group, in place (CPU tensors)."""
        self.run(lambda: dist.all_reduce(tensor, group=self.group), what=what)
        return tensor

    def all_reduce_async(self, tensor: torch.Tensor, *, what: str) -> torch.futures.Future[torch.Tensor]:
        """Start a sum of ``tensor`` over the group; the future holds ``tensor`` or carries ``PeerError``."""
        work = self.run(lambda: dist.all_reduce(tensor, group=self.group, async_op=True), what=what)

        def done(fut: torch.futures.Future[Any]) -> torch.Tensor:
            try:
                return fut.value()[0]
            except RuntimeError as exc:
                if isinstance(exc, SaddleError):
                    raise
                raise self._peer_error(what, exc) from exc

        return work.get_future().then(done)

    def all_gather(self, tensor: torch.Tensor, *, what: str) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape and dtype on every rank), in rank order."""
        every = [torch.empty_like(tensor) for _ in range(self.size)]
        self.run(lambda: dist.all_gather(every, tensor, group=self.group), what=what)
        return every

    def all_gather_object(self, obj: Any, *, what: str) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order."""
        every: list[Any] = [None] * self.size
        self.run(lambda: dist.all_gather_object(every, obj, group=self.group), what=what)
        return every

    def broadcast(self, tensor: torch.Tensor, src: int, *, what: str) -> torch.Tensor:
        """``src``'s ``tensor`` into every rank's, in place (CPU tensors)."""
        self.run(lambda: dist.broadcast(tensor, src=src, group=self.group), what=what)
        return tensor

    def send(self, tensor: torch.Tensor, dst: int, *, tag: int, what: str) -> None:
        """Send ``tensor`` to rank ``dst`` of the group (blocking)."""
        self.run(lambda: dist.send(tensor, dst, group=self.group, tag=tag), what=what)

    def recv(self, tensor: torch.Tensor, src: int, *, tag: int, what: str) -> torch.Tensor:
        """Receive into ``tensor`` from rank ``src`` of the group (blocking)."""
        self.run(lambda: dist.recv(tensor, src, group=self.group, tag=tag), what=what)
        return tensor

    # -- handshakes -----------------------------------------------------------------------------------
    def agree(self, values: Sequence[int], *, what: str) -> list[tuple[int, ...]]:
        """Every rank's ``values`` (a digest: CRCs, sizes, codes), in rank order.

        The one handshake behind every "do all ranks hold the same ...?" check: one all-gather of a
        few int64. Every rank must pass the same number of values.
        """
        mine = torch.tensor(list(values), dtype=torch.int64)
        return [tuple(int(v) for v in t.tolist()) for t in self.all_gather(mine, what=what)]

    def same_everywhere(self, values: Sequence[int], *, what: str) -> bool:
        """Whether every rank passed the same ``values`` (see :meth:`agree`)."""
        every = self.agree(values, what=what)
        return all(v == every[self.rank] for v in every)


__all__ = ["Door", "crc_of"]
