"""Exceptions and warnings a user can catch (docs/errors.md).

Every error the library raises about its own operation derives from :class:`SaddleError`, so a training
loop can catch "anything from saddle_torch" in one clause; each also keeps the built-in base it always
had (``RuntimeError`` or ``ValueError``), so existing ``except RuntimeError`` clauses still catch it.
The native extension raises these very classes (its exceptions are translated in
``csrc/torch/bindings.cpp``), with the structured fields below filled in. Bad arguments are plain
``ValueError``/``TypeError``, as in PyTorch.

    SaddleError
    ├── PeerError            (RuntimeError)  a neighbour died, stalled or closed its connection
    ├── CorruptMessageError  (RuntimeError)  a compressed message failed validation
    ├── FencedError          (RuntimeError)  elastic: the others went on without this rank
    ├── MismatchError        (ValueError)    ranks hold different tensors, codecs or topologies
    └── InternalError        (RuntimeError)  an internal invariant does not hold (a bug: report it)

    SaddleWarning (UserWarning): DifferentStartWarning; CompressionWarning (also a RuntimeWarning)
"""

from __future__ import annotations


class SaddleError(Exception):
    """Base class of every error saddle_torch raises about its own operation."""


class PeerError(SaddleError, RuntimeError):
    """A neighbour died, stalled past the timeout or closed its connection during communication.

    Raised by gossip rounds and by every collective the library issues (they all pass through
    :mod:`saddle_torch.comm`). Without elastic training the process group is unusable afterwards:
    restart the job (``torchrun --max-restarts``) from a checkpoint. Under ``init(elastic=True)`` the
    step that met it is recovered by the library and the user never sees it.

    Attributes:
        peer: the rank (in the group the failure happened in) whose link failed, or ``None`` when no
            single neighbour is blamed (a collective, an aborted round).
        aborted: the round was given up on because the membership is changing (elastic), not
            because of this link.
    """

    def __init__(self, message: str = "", *, peer: int | None = None, aborted: bool = False) -> None:
        super().__init__(message)
        self.peer = peer
        self.aborted = aborted


class CorruptMessageError(SaddleError, RuntimeError):
    """A compressed gossip message failed validation (truncated, altered, or for another codec or size).

    Nothing was written; the CHOCO state of the ranks is no longer consistent: restart from a checkpoint.

    Attributes:
        peer: the neighbour whose message it was (``None`` when decoded outside a round).
    """

    def __init__(self, message: str = "", *, peer: int | None = None) -> None:
        super().__init__(message)
        self.peer = peer


class FencedError(SaddleError, RuntimeError):
    """Elastic training: the other ranks went on without this one (it stalled past the timeout).

    Its model is stale; the process must exit (restart it to rejoin). Not a :class:`PeerError`: a
    training loop that retries on ``PeerError`` must not retry this.
    """


class AuthenticationError(SaddleError, RuntimeError):
    """Elastic training: this process's job secret is not the job's, or a tagged message failed its check.

    Nothing from the job is acted on or loaded: check ``--secret-file`` / ``SADDLE_SECRET`` on both sides.
    """


class StoreLostError(SaddleError, RuntimeError):
    """Elastic training: the launcher's store (node 0's launcher) is gone, so membership cannot change.

    Training goes on without it while no rank fails; the first failure after it went stops every rank
    it reaches with this error (the message names the store and this rank's last checkpoint).
    """


class MismatchError(SaddleError, ValueError):
    """Ranks hold different tensors (shape, dtype or compression) where they must hold the same."""


class InternalError(SaddleError, RuntimeError):
    """An internal invariant of the native core does not hold: a bug (please report it with the message)."""


class SaddleWarning(UserWarning):
    """Base class of saddle_torch's warnings."""


class DifferentStartWarning(SaddleWarning):
    """The ranks' models differ when :func:`saddle_torch.DistributedOptimizer` wraps them."""


class CompressionWarning(SaddleWarning, RuntimeWarning):
    """Compressed gossip is not converging (a γ too large for the codec and the graph)."""


for _cls in (
    SaddleError,
    PeerError,
    CorruptMessageError,
    FencedError,
    AuthenticationError,
    StoreLostError,
    MismatchError,
    InternalError,
    SaddleWarning,
    DifferentStartWarning,
    CompressionWarning,
):
    _cls.__module__ = "saddle_torch"

__all__ = [
    "AuthenticationError",
    "CompressionWarning",
    "CorruptMessageError",
    "DifferentStartWarning",
    "FencedError",
    "InternalError",
    "MismatchError",
    "PeerError",
    "SaddleError",
    "SaddleWarning",
    "StoreLostError",
]
