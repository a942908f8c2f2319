"""Gossip names: the set-up handshake of each name, its round counter, and γ per codec.

A gossip *name* identifies one tensor across ranks (``opt0/params/0/float32/cpu``, ``ddp/grads3/1024``,
or a user's ``name=``). Its first round is preceded by a handshake (one all-gather through the
door) that checks every rank gossips the same shape, dtype and codec under it; that handshake is
also where ``gamma="auto"`` is resolved for the name's codec on the current topology (:class:`GammaTable`),
so that no round ever computes it.
"""

from __future__ import annotations

import zlib

import torch

from saddle_torch.comm import Door
from saddle_torch.compression import Compression, tune_gamma
from saddle_torch.errors import InternalError, MismatchError
from saddle_torch.topology import Topology

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _signature(name: str, tensor: torch.Tensor, codec: Compression) -> list[int]:
    """crc(name), numel, dtype code, ndim, up to 6 dims, crc(codec)."""
    shape = list(tensor.shape)[:6]
    return [
        zlib.crc32(name.encode()),
        tensor.numel(),
        DTYPES.index(tensor.dtype),
        tensor.dim(),
        *(shape + [-1] * (6 - len(shape))),
        zlib.crc32(repr(codec).encode()),
    ]


def _describe(sig: list[int] | tuple[int, ...]) -> str:
    shape = tuple(sig[4 : 4 + min(sig[3], 6)])
    return f"shape {shape} {DTYPES[sig[2]]}".replace("torch.", "")


class GammaTable:
    """γ of ``gamma="auto"`` per (topology, codec), resolved at set-up and only looked up by rounds."""

    def __init__(self) -> None:
        self._values: dict[tuple[int, str], float] = {}

    def resolve(self, codec: Compression, topology: Topology, digest: int, door: Door) -> float:
        """The tuned γ of ``codec`` on ``topology`` (collective the first time: rank 0 tunes, all receive).

        :func:`saddle_torch.compression.tune_gamma` is deterministic, but one rank computes it so that
        every rank uses the same value whatever its CPU.
        """
        if not codec.uses_choco:
            return 1.0
        key = (digest, repr(codec))
        value = self._values.get(key)
        if value is None:
            mine = torch.tensor([tune_gamma(topology, codec) if door.rank == 0 else 0.0])
            door.broadcast(mine, 0, what="broadcasting the tuned gamma")
            value = self._values[key] = float(mine)
        return value

    def value(self, gamma: float | str, codec: Compression, digest: int) -> float:
        """γ of a round: ``gamma`` itself, or for ``"auto"`` 1 (exact) or the value resolved at set-up.

        Raises:
            InternalError: ``"auto"`` for a codec whose γ was never resolved (a round before its set-up).
        """
        if gamma != "auto":
            return float(gamma)
        if not codec.uses_choco:
            return 1.0
        value = self._values.get((digest, repr(codec)))
        if value is None:
            raise InternalError(f"gamma='auto' for {codec!r} was not resolved at set-up")
        return value


class Names:
    """The gossip names of one context: handshakes, round counters, codecs in use, name prefixes."""

    def __init__(self) -> None:
        self._registered: dict[str, list[int]] = {}
        self._light: dict[str, tuple[torch.Size, torch.dtype, Compression]] = {}  # the fast re-check
        self._codecs: dict[str, Compression] = {}
        self._steps: dict[str, int] = {}
        self._prefixes: dict[str, int] = {}

    def register(self, name: str, tensor: torch.Tensor, codec: Compression, door: Door) -> bool:
        """Check, once per name, that every rank gossips the same shape, dtype and codec under it.

        Collective on the first use of ``name`` (one all-gather through ``door``).

        Returns:
            whether this call registered the name (it was new).

        Raises:
            ValueError: a dtype gossip cannot average.
            MismatchError: ranks differ (raised on every rank, naming them), or ``name`` was
                registered earlier with another tensor or codec.
        """
        light = self._light.get(name)
        if light is not None and light == (tensor.shape, tensor.dtype, codec):
            return False  # every round after the first: no CRC, no codec repr
        if tensor.dtype not in DTYPES:
            raise ValueError(f"gossip averages float32/float64/float16/bfloat16 tensors, got {tensor.dtype}")
        sig = _signature(name, tensor, codec)
        known = self._registered.get(name)
        if known is not None:
            if known != sig:
                raise MismatchError(
                    f"gossip tensor {name!r} was registered with {_describe(known)} and is now "
                    f"{_describe(sig)}"
                    + (" with another compression" if known[-1] != sig[-1] else "")
                    + "; use a different name for a different tensor or codec"
                )
            return False
        every = door.agree(sig, what=f"checking the shape of gossip name {name!r} on every rank")
        groups: dict[tuple[int, ...], list[int]] = {}
        for r, theirs in enumerate(every):
            groups.setdefault(theirs, []).append(r)
        if len(groups) > 1:
            parts = "; ".join(
                f"rank(s) {ranks} have {_describe(s)}"
                + ("" if s[0] == sig[0] else " under another name")
                + ("" if s[-1] == sig[-1] else " with another compression")
                for s, ranks in groups.items()
            )
            raise MismatchError(
                f"ranks registered different tensors for gossip {name!r} (this rank: compression "
                f"{codec if not codec.is_none else 'none'}): {parts}; pass the same tensors and the same "
                "compression= on every rank"
            )
        self._registered[name] = sig
        self._light[name] = (tensor.shape, tensor.dtype, codec)
        self._codecs[name] = codec
        return True

    def codecs(self) -> list[Compression]:
        """The distinct codecs of the registered names."""
        seen: dict[str, Compression] = {}
        for codec in self._codecs.values():
            seen.setdefault(repr(codec), codec)
        return list(seen.values())

    def step_of(self, name: str) -> int:
        """Number of rounds done so far under ``name`` (selects the phase of a time-varying topology)."""
        return self._steps.get(name, 0)

    def set_step(self, name: str, step: int) -> None:
        """Set the round counter of ``name`` (restoring a checkpoint of a time-varying topology)."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        self._steps[name] = step

    def new_prefix(self, kind: str) -> str:
        """A fresh name prefix (``opt0/``, ``opt1/``, ...), equal on ranks that create objects in order."""
        n = self._prefixes.get(kind, 0)
        self._prefixes[kind] = n + 1
        return f"{kind}{n}/"

    def prefixes(self, kind: str) -> int:
        """How many prefixes of ``kind`` were handed out."""
        return self._prefixes.get(kind, 0)

    def forget(self) -> None:
        """Handshakes and round counters start afresh (a new group); prefixes stay."""
        self._registered.clear()
        self._light.clear()
        self._codecs.clear()
        self._steps.clear()


__all__ = ["DTYPES", "GammaTable", "Names"]
