"""The job secret of an elastic job, and the HMAC tags that every membership value carries under it.

The launcher's store has no authentication: any process that reaches its port can read and write
every key. What the membership protocol acts on is therefore tagged: each value carries
``HMAC-SHA256(secret, job ‖ key ‖ payload)``, where ``job`` is a random id that node 0's launcher
draws when the job starts (so a value recorded in another job under the same secret does not verify
here) and ``key`` is the store key the value was written to (so a value copied to another key, e.g.
another epoch's, does not verify either). A value whose tag does not verify is ignored and logged.

Where the secret comes from: the launcher's ``--secret-file PATH`` or the environment variable
``SADDLE_SECRET``; a one-machine launch without either generates one. The launcher hands it to its
workers in ``SADDLE_SECRET``. docs/security.md says what the tags protect and what they do not.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from saddle_torch.errors import AuthenticationError

SECRET_ENV = "SADDLE_SECRET"  # the job secret (the launcher reads it, and sets it for its workers)
MIN_SECRET_BYTES = 16
TAG_BYTES = 32  # SHA-256


def check_secret(secret: bytes, source: str) -> bytes:
    """``secret`` if it is long enough to be one (at least 16 bytes), else a clear ``ValueError``."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the job secret from {source} has {len(secret)} bytes; use at least {MIN_SECRET_BYTES} random "
            "bytes, e.g. `python -c 'import secrets; print(secrets.token_hex(32))' > job.secret`"
        )
    return secret


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """The secret in ``path`` (surrounding whitespace stripped).

    Raises:
        ValueError: the file cannot be read, or holds fewer than 16 bytes.
    """
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as e:
        raise ValueError(f"cannot read the job secret file {path}: {e}") from e
    return check_secret(secret, f"--secret-file {path}")


def secret_from_env() -> bytes | None:
    """The secret in ``SADDLE_SECRET``, or ``None`` when it is not set."""
    raw = os.environ.get(SECRET_ENV)
    return None if raw is None else check_secret(raw.encode(), f"${SECRET_ENV}")


def generate_secret() -> bytes:
    """A fresh random secret (64 hex characters)."""
    return secrets.token_hex(32).encode()


def new_job_id() -> str:
    """A random id for a new job: tags of one job never verify in another under the same secret."""
    return secrets.token_hex(8)


class Signer:
    """Tags values for one job under its secret.

    Args:
        secret: the job secret.
        job: the job id (``""`` only for the job id's own entry, which every process reads first).
    """

    def __init__(self, secret: bytes, job: str = "") -> None:
        self._secret = secret
        self.job = job

    def for_job(self, job: str) -> Signer:
        """The signer of job ``job`` under the same secret."""
        return Signer(self._secret, job)

    def tag(self, key: str, payload: bytes) -> bytes:
        """The tag of ``payload`` written under ``key``: 32 raw bytes."""
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in (self.job.encode(), key.encode()):
            mac.update(len(part).to_bytes(4, "big") + part)  # lengths first: no two splits collide
        mac.update(payload)
        return mac.digest()

    def verify(self, key: str, payload: bytes, tag: bytes) -> bool:
        """Whether ``tag`` is the tag of ``payload`` under ``key`` (constant time)."""
        return hmac.compare_digest(self.tag(key, payload), tag)


__all__ = [
    "MIN_SECRET_BYTES",
    "SECRET_ENV",
    "TAG_BYTES",
    "AuthenticationError",
    "Signer",
    "check_secret",
    "generate_secret",
    "new_job_id",
    "read_secret_file",
    "secret_from_env",
]
