"""Tagged values on the launcher's store: what the membership protocol writes and reads.

:class:`Board` is the membership protocol's view of the store. Every value it writes carries an HMAC
tag (:class:`saddle_torch.elastic.auth.Signer`); every value it reads without a valid tag is ignored
and logged (once per value), never acted on. Two kinds of key:

- **logs** (:meth:`Board.post`, :meth:`Board.entries`, :meth:`Board.first`): tagged entries appended
  atomically, one per line. "First writer wins" is "the first *valid* entry wins": every reader sees
  the same order, so all agree on it, and an untagged entry written first cannot block the protocol
  (a ``compare_set`` on a plain value could be pre-empted by anyone).
- **marks** (:meth:`Board.put`, :meth:`Board.read`): one tagged value per key (a dead rank, a rank that
  finished, one that is busy or suspected).

:class:`SignedStore` tags every value a Gloo group's rendezvous writes (the members' addresses), so a
process without the secret cannot make the members connect to it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import torch.distributed as dist

from saddle_torch.elastic.auth import TAG_BYTES, Signer, new_job_id
from saddle_torch.errors import AuthenticationError

log = logging.getLogger("saddle_torch.elastic")
PREFIX = "saddle/elastic/"
SEPARATOR = b"|"
END = b"\n"


def key(*parts: object) -> str:
    """A store key under the elastic prefix, e.g. ``key(3, "broken")`` → ``saddle/elastic/3/broken``."""
    return PREFIX + "/".join(str(p) for p in parts)


def _clean(payload: str) -> bytes:
    """A payload as one log line (newlines would split the entry)."""
    return payload.replace("\n", " ").encode()


class Board:
    """Tagged logs and marks on ``store`` under ``signer``.

    Args:
        store: a client of the launcher's store.
        signer: the job's signer.
    """

    def __init__(self, store: dist.Store, signer: Signer) -> None:
        self.store = store
        self.signer = signer
        self._reported: set[tuple[str, bytes]] = set()

    def _ignore(self, key: str, raw: bytes) -> None:
        if (key, raw) not in self._reported:
            self._reported.add((key, raw))
            log.warning(
                "saddle_torch.elastic: ignored a value without a valid tag at %s (not written by a member "
                "of this job, or copied from another key or job): %r",
                key,
                raw[:120],
            )

    def _line(self, key: str, payload: bytes) -> bytes:
        return payload + SEPARATOR + self.signer.tag(key, payload).hex().encode() + END

    def _open_line(self, key: str, line: bytes) -> str | None:
        payload, sep, tag = line.rpartition(SEPARATOR)
        try:
            raw_tag = bytes.fromhex(tag.decode())
        except ValueError:  # not hex
            raw_tag = b""
        ok = bool(sep) and len(raw_tag) == TAG_BYTES and self.signer.verify(key, payload, raw_tag)
        if not ok:
            self._ignore(key, line)
            return None
        return payload.decode()

    # ---- logs --------------------------------------------------------------------------------------
    def post(self, key: str, payload: str) -> None:
        """Append a tagged entry to the log at ``key``."""
        self.store.append(key, self._line(key, _clean(payload)))

    def entries(self, key: str) -> list[str]:
        """The valid entries of the log at ``key``, in the order they were appended (``[]`` if none)."""
        if not self.store.check([key]):
            return []
        out = []
        for line in self.store.get(key).split(END):
            if line:
                payload = self._open_line(key, line)
                if payload is not None:
                    out.append(payload)
        return out

    def first(self, key: str) -> str | None:
        """The first valid entry of the log at ``key`` (what its first trusted writer wrote), or ``None``."""
        valid = self.entries(key)
        return valid[0] if valid else None

    # ---- marks -------------------------------------------------------------------------------------
    def put(self, key: str, payload: str = "1") -> None:
        """Set the mark at ``key`` to a tagged ``payload``."""
        self.store.set(key, self._line(key, _clean(payload)))

    def read(self, key: str) -> str | None:
        """The payload of the mark at ``key``, or ``None`` when it is absent or its tag does not verify."""
        if not self.store.check([key]):
            return None
        return self._open_line(key, self.store.get(key).rstrip(END))

    def has(self, key: str) -> bool:
        """Whether a valid mark is at ``key``."""
        return self.read(key) is not None

    def delete(self, key: str) -> None:
        """Remove the mark at ``key``."""
        self.store.delete_key(key)


def create_job(store: dist.Store, secret: bytes) -> Board:
    """Node 0's launcher: draw the job id, record it tagged under the secret, return the job's board."""
    job = new_job_id()
    Board(store, Signer(secret)).post(key("job"), job)
    return Board(store, Signer(secret, job))


def open_job(store: dist.Store, secret: bytes) -> Board:
    """The board of the job whose store ``store`` is, for a process holding ``secret``.

    Raises:
        AuthenticationError: no job id in the store verifies under ``secret`` (this process's secret
            is not the job's): nothing of the job is read or acted on.
    """
    if not store.check([key("job")]):
        store.wait([key("job")])  # node 0's launcher writes it before anything else
    job = Board(store, Signer(secret)).first(key("job"))
    if job is None:
        raise AuthenticationError(
            "saddle_torch: this process's job secret is not the job's (the job id in the launcher's store "
            "does not verify under it): refused. Give every launcher the same --secret-file or "
            "SADDLE_SECRET."
        )
    return Board(store, Signer(secret, job))


class SignedStore(dist.Store):
    """A store whose values carry tags: a Gloo group's rendezvous over it accepts members' values only.

    ``set`` appends the tag of (key, value); ``get`` checks and strips it, and raises
    :class:`saddle_torch.AuthenticationError` for a value without a valid tag (the group then fails to
    form, and the membership protocol agrees again). Counters (``add``) are not tagged.
    """

    def __init__(self, inner: dist.Store, signer: Signer) -> None:
        super().__init__()
        self._inner = inner
        self._signer = signer

    def set(self, key: str, value: bytes | str) -> None:  # noqa: D102
        data = value.encode() if isinstance(value, str) else bytes(value)
        self._inner.set(key, data + self._signer.tag(key, data))

    def get(self, key: str) -> bytes:  # noqa: D102
        raw = self._inner.get(key)
        data, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        if len(raw) < TAG_BYTES or not self._signer.verify(key, data, tag):
            log.warning("saddle_torch.elastic: refused a rendezvous value without a valid tag at %s", key)
            raise AuthenticationError(
                f"saddle_torch: the value at {key} in the job's store has no valid tag under the job "
                "secret: a process without the secret wrote it (the group is not formed with it)"
            )
        return data

    def add(self, key: str, amount: int) -> int:  # noqa: D102
        return self._inner.add(key, amount)

    def check(self, keys: list[str]) -> bool:  # noqa: D102
        return self._inner.check(keys)

    def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:  # noqa: D102
        if timeout is None:
            self._inner.wait(keys)
        else:
            self._inner.wait(keys, timeout)

    def delete_key(self, key: str) -> bool:  # noqa: D102
        return self._inner.delete_key(key)

    def num_keys(self) -> int:  # noqa: D102
        return self._inner.num_keys()

    def set_timeout(self, timeout: timedelta) -> None:  # noqa: D102
        self._inner.set_timeout(timeout)

    def compare_set(self, key: str, expected: bytes | str, desired: bytes | str) -> bytes:  # noqa: D102
        raise NotImplementedError("SignedStore: compare_set is not used by a Gloo rendezvous")


__all__ = ["PREFIX", "Board", "SignedStore", "create_job", "key", "open_job"]
