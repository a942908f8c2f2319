"""Compressed gossip: codecs and CHOCO error feedback (Koloskova et al., 2019).

``compression=`` accepts a :class:`Compression` (or ``None`` / ``Compression.none`` for exact gossip).
Every rank keeps a public copy x̂ and s = Σ_{j∈N(i)∪{i}} w_ij x̂_j per gossip name; a round sends
q = C(x − x̂), then x̂ += q, s += Σ_j w_ij q_j and x += γ (s − x̂). x̂ and s start at the tensor itself
when it is the same on every rank (a broadcast model; CRC-checked once), else at 0 as in the paper.
Messages carry a validated header;
``stats()`` counts their exact bytes. "4×" means a message is at most a quarter of the fp32 bytes,
header and indices included: ``topk`` needs ratio < 1/8 for it, and ``int8`` reaches 3.94× (one fp32
scale per 256 elements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from saddle_torch import _ops
from saddle_torch.topology import Topology


@dataclass(frozen=True)
class Compression:
    """A codec and whether CHOCO error feedback is used.

    Build with the class attributes/methods: ``Compression.none``, ``.fp16``, ``.bf16``, ``.int8``,
    ``Compression.qsgd(bits)``, ``Compression.topk(ratio)``, ``Compression.randk(ratio)``,
    ``Compression.sign``. ``error_feedback=False`` gives naive compressed gossip
    x ← x + γ Σ_j w_ij (C(x_j) − C(x_i)) — for comparison; it does not reach consensus.
    """

    codec: str = "none"
    bits: int = 8
    ratio: float = 0.01
    block_size: int = 256
    error_feedback: bool = True

    def __post_init__(self) -> None:
        # Building the native codec validates the parameters (ValueError with the reason).
        object.__setattr__(
            self, "_native", _ops.make_codec(self.codec, self.bits, self.ratio, self.block_size)
        )

    def __reduce__(self) -> tuple:
        # Pickled by its fields; the native codec is rebuilt on load.
        return (Compression, (self.codec, self.bits, self.ratio, self.block_size, self.error_feedback))

    @property
    def native(self) -> object:
        """The C++ codec."""
        return self._native  # type: ignore[attr-defined]

    @property
    def is_none(self) -> bool:
        """No compression: exact gossip (no CHOCO state)."""
        return self.codec == "none"

    def encoded_bytes(self, numel: int) -> int:
        """Exact bytes of one message for ``numel`` elements (header included)."""
        return int(self.native.encoded_bytes(numel))

    def compression_ratio(self, numel: int) -> float:
        """fp32 bytes over message bytes for ``numel`` elements."""
        return 4 * numel / self.encoded_bytes(numel)

    def without_error_feedback(self) -> Compression:
        """The same codec in naive compressed gossip (no x̂, s)."""
        return replace(self, error_feedback=False)

    @staticmethod
    def qsgd(bits: int = 8, block_size: int = 256) -> Compression:
        """Stochastic b-bit quantization (unbiased), one fp32 scale per block."""
        return Compression("qsgd", bits=bits, block_size=block_size)

    @staticmethod
    def topk(ratio: float) -> Compression:
        """Keep the ⌈ratio·n⌉ entries of largest magnitude (values + u32 indices)."""
        return Compression("topk", ratio=ratio)

    @staticmethod
    def randk(ratio: float) -> Compression:
        """Keep ⌈ratio·n⌉ entries chosen by a seed both sides share (no indices on the wire)."""
        return Compression("randk", ratio=ratio)

    def __repr__(self) -> str:
        ef = "" if self.error_feedback else ", error_feedback=False"
        return f"Compression({self.native!r}{ef})"


Compression.none = Compression("none")  # type: ignore[attr-defined]
Compression.fp16 = Compression("fp16")  # type: ignore[attr-defined]
Compression.bf16 = Compression("bf16")  # type: ignore[attr-defined]
Compression.int8 = Compression("qsgd", bits=8)  # type: ignore[attr-defined]
Compression.sign = Compression("sign")  # type: ignore[attr-defined]


def resolve(compression: Compression | str | None) -> Compression | None:
    """``None`` for exact gossip, else a :class:`Compression` (strings: ``"int8"``, ``"topk:0.1"``...)."""
    if compression is None:
        return None
    if isinstance(compression, str):
        name, *arg = compression.split(":")
        if name in ("none", "fp16", "bf16", "int8", "sign"):
            compression = getattr(Compression, name)
        elif name == "qsgd":
            compression = Compression.qsgd(int(arg[0]) if arg else 8)
        elif name in ("topk", "randk"):
            if not arg:
                raise ValueError(f"{name} needs a ratio, e.g. '{name}:0.1'")
            compression = getattr(Compression, name)(float(arg[0]))
        else:
            raise ValueError(f"unknown compression {compression!r}; e.g. int8, fp16, topk:0.1, qsgd:4, sign")
    if not isinstance(compression, Compression):
        raise ValueError(f"compression must be a saddle_torch.Compression, got {type(compression).__name__}")
    return None if compression.is_none else compression


def roundtrip(compression: Compression, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """C(x): encode then decode a float32 CPU tensor, as a receiver sees it."""
    flat = x.detach().to("cpu", torch.float32).contiguous().reshape(-1)
    msg = _ops.codec_encode(compression.native, flat, seed)
    return _ops.codec_decode(compression.native, msg, flat.numel(), seed).view_as(x)


def simulate_consensus(
    topology: Topology,
    compression: Compression,
    gamma: float,
    rounds: int = 200,
    dim: int = 1000,
    seed: int = 0,
) -> float:
    """Relative consensus error ‖X − X̄‖/‖X₀ − X̄‖ after ``rounds`` of compressed gossip on W."""
    if topology.period != 1:
        raise ValueError("compressed gossip needs a static topology")
    n = topology.size
    w = topology.mixing_matrix().to(torch.float32)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    mean = x.mean(0, keepdim=True)
    start = float((x - mean).norm())
    x_hat = torch.zeros_like(x)
    s = torch.zeros_like(x)
    for t in range(rounds):
        if compression.error_feedback:
            q = torch.stack([roundtrip(compression, x[i] - x_hat[i], seed=t * n + i) for i in range(n)])
            x_hat += q
            s += w @ q
            x += gamma * (s - x_hat)
        else:
            c = torch.stack([roundtrip(compression, x[i], seed=t * n + i) for i in range(n)])
            x += gamma * (w @ c - c)
        if not torch.isfinite(x).all():
            return math.inf
    return float((x - mean).norm()) / start


def tune_gamma(
    topology: Topology,
    compression: Compression | str,
    grid: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    rounds: int = 200,
    dim: int = 1000,
    seed: int = 0,
) -> float:
    """The consensus step γ from ``grid`` that drives simulated compressed consensus furthest on W.

    Simulates ``rounds`` of CHOCO gossip (the real codec, the real mixing matrix) on random vectors
    and returns the γ with the smallest final relative consensus error.
    """
    comp = resolve(compression)
    if comp is None:
        return 1.0
    errors = {gamma: simulate_consensus(topology, comp, gamma, rounds, dim, seed) for gamma in grid}
    return min(errors, key=lambda k: errors[k])


__all__ = ["Compression", "resolve", "roundtrip", "simulate_consensus", "tune_gamma"]
